"""Heart-window (``roi``) inference of the Segmenter: where the window goes, and its fallbacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cardioseg.data.synthetic import PhantomConfig, make_phantom
from cardioseg.evaluation.metrics import compute_metrics
from cardioseg.inference import Segmenter
from cardioseg.inference.segmenter import (
    ROI_MARGIN,
    _heart_mask,
    _inner_edges,
    _window,
)


@pytest.mark.parametrize(
    ("lo", "hi", "n", "expected"),
    [
        (100, 140, 320, (40, 200)),  # small heart: the minimum size (160), centred on it
        (100, 240, 320, (66, 274)),  # large heart: extent + 2 margins (205) rounded up to 208
        (0, 30, 320, (0, 160)),  # at the image edge: shifted inside, not cut
        (300, 319, 320, (160, 320)),
        (20, 200, 256, (0, 256)),  # would not fit: the whole axis
    ],
)
def test_window_covers_the_heart_with_margins_inside_the_image(lo, hi, n, expected):
    start, end = _window(lo, hi, n, min_size=160, multiple=16)
    assert (start, end) == expected
    assert 0 <= start < end <= n and (end - start) % 16 == 0
    if (start, end) != (0, n):
        assert start <= max(lo - ROI_MARGIN, 0) and end >= min(hi + 1 + ROI_MARGIN, n)


def test_inner_edges_count_only_window_edges_inside_the_image():
    heart = np.zeros((2, 32, 32), dtype=bool)
    heart[1, 0, 10] = True  # on the window's top row
    assert _inner_edges(heart, (8, 40, 8, 40), (64, 64)) == (True, False, False, False)
    assert not any(_inner_edges(heart, (0, 32, 8, 40), (64, 64)))  # top row = image edge
    heart[1, 0, 10] = False
    heart[0, 5, -1] = True  # right column
    assert _inner_edges(heart, (0, 32, 0, 32), (32, 64)) == (False, False, False, True)
    assert not any(_inner_edges(heart, (0, 32, 32, 64), (32, 64)))


def test_heart_mask_drops_small_fragments_only():
    labels = torch.zeros(3, 40, 40, dtype=torch.long)
    labels[:, 5:25, 5:25] = 1  # the heart: 1 200 pixels across 3 slices
    labels[1, 30:35, 30:40] = 3  # a second part, 50 pixels: under 10 % of the heart
    labels[0, 30:40, 0:20] = 2  # 200 pixels: kept
    heart = _heart_mask(labels)
    assert heart[:, 5:25, 5:25].all() and heart[0, 30:40, 0:20].all()
    assert not heart[1, 30:35, 30:40].any()
    assert not _heart_mask(torch.zeros(2, 8, 8, dtype=torch.long)).any()


class _Threshold:
    """A stand-in for the network: foreground (class 1) wherever the input is above 0.5, so
    the prediction of a pixel never depends on the window it is seen in."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor, member_entropy: bool = False) -> torch.Tensor:
        assert not member_entropy  # these tests ask for probabilities only
        self.shapes.append(tuple(x.shape))
        fg = (x[:, 0] > 0.5).float()
        return torch.stack([1 - fg, fg, torch.zeros_like(fg), torch.zeros_like(fg)], 1)


def _roi_segmenter(checkpoint) -> tuple[Segmenter, _Threshold]:
    seg = Segmenter(checkpoint, roi=True)
    stand_in = _Threshold()
    seg._probabilities = stand_in  # type: ignore[method-assign]
    return seg, stand_in


def _stack(h: int = 256, w: int = 288, boxes=((100, 140, 120, 170),)) -> torch.Tensor:
    x = torch.zeros(6, 1, h, w)
    for y0, y1, x0, x1 in boxes:
        x[:, :, y0:y1, x0:x1] = 1.0
    return x


def test_roi_segments_a_window_and_matches_the_whole_image(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    x = _stack()
    p = seg._forward(x)
    assert seg.roi_counts == {"window": 1, "full": 0, "fallback": 0}
    assert net.shapes[0] == (1, 1, 256, 288)  # the probe: the middle slice, whole image
    window = net.shapes[1]
    assert window[0] == 6 and window[2] * window[3] < 256 * 288 / 2
    assert torch.equal(p, net(x))  # same probabilities as the whole image, background outside


def test_roi_grows_the_window_to_a_heart_it_cut(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    x = _stack()
    x[0, :, 100:110, 10:280] = 1.0  # on another slice, the heart reaches across the image
    p = seg._forward(x)
    assert seg.roi_counts == {"window": 1, "full": 0, "fallback": 0}
    grown = net.shapes[-1]
    assert grown[3] == 288 and grown[2] < 256  # the whole width, not the whole height
    assert torch.equal(p, net(x))


def test_roi_falls_back_to_the_whole_image(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    x = _stack()
    x[0, :, 100:110, 10:280] = 1.0
    x[1, :, 10:250, 140:150] = 1.0  # grown, the window would be the whole image
    p = seg._forward(x)
    assert seg.roi_counts == {"window": 0, "full": 0, "fallback": 1}
    assert net.shapes[-1] == (6, 1, 256, 288)
    assert torch.equal(p, net(x))
    # no heart on the middle slice: the whole image, without a window
    empty = torch.zeros(6, 1, 256, 288)
    seg._forward(empty)
    assert seg.roi_counts == {"window": 0, "full": 1, "fallback": 1}


def test_roi_ignores_a_fragment_at_the_window_edge(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    x = _stack()
    x[5, :, 174:178, 150:154] = 1.0  # 16 pixels across the window's lower edge (row 176)
    p = seg._forward(x)
    assert seg.roi_counts["window"] == 1
    assert torch.equal(p[..., :170, :], net(x)[..., :170, :])


def test_frames_of_one_study_share_the_window(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    with seg.sharing_window():
        for shift in (0, 4, 8):  # the heart moves a little between frames
            seg._forward(torch.roll(_stack(), shift, dims=-1))
    probes = [s for s in net.shapes if s[0] == 1]
    assert len(probes) == 1 and seg.roi_counts["window"] == 3
    seg._forward(_stack())  # outside the block every volume is probed again
    assert len([s for s in net.shapes if s[0] == 1]) == 2


def test_predict_frames_gives_each_frame_its_own_labels_in_one_window(tiny_checkpoint):
    """The pipelined frames (labels of one frame made while the next is segmented) are the
    labels predict_volume gives each frame, in order, and share one window."""
    rng = np.random.default_rng(5)
    frames = []
    for t in range(4):
        vol = rng.normal(0.1, 0.05, (120, 110, 3)).astype(np.float32)
        vol[40 + 3 * t : 80, 30 : 70 + 2 * t] = 1.0  # a heart that changes between frames
        frames.append(vol)
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    expected = [seg.predict_volume(f, (1.5, 1.5, 8.0))[0] for f in frames]
    net.shapes.clear()
    with seg.sharing_window():
        out = seg.predict_frames(iter(frames), (1.5, 1.5, 8.0))
    assert all(p is None and d is None for _, p, d in out)
    got = [lab for lab, _, _ in out]
    assert len(got) == 4
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert len([s for s in net.shapes if s[0] == 1]) == 1  # one probe for the four frames
    assert len({a.tobytes() for a in got}) == 4  # the frames really differ


def test_test_time_adaptation_adapts_to_the_window(tiny_checkpoint):
    """TENT and the like adapt the network to the slices it will segment: the window."""
    from contextlib import contextmanager

    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi_size = 64
    seen: list[tuple[int, ...]] = []

    class Adapter:
        @contextmanager
        def adapted(self, model, x):
            seen.append(tuple(x.shape))
            yield model

    seg.adapter = Adapter()
    x = _stack()
    vol = x[:, 0].permute(1, 2, 0).numpy()  # (H, W, Z) at the model's 1.25 mm spacing
    seg.preprocessor.forward = lambda volume, spacing, affine=None: (x, None)
    seg.preprocessor.inverse_labels = lambda probs, state: probs.argmax(1).numpy()
    seg.do_postprocess = False
    labels, _ = seg.predict_volume(vol, (1.25, 1.25, 8.0))
    assert seen == [net.shapes[-1]] and seen[0][2] * seen[0][3] < 256 * 288 / 2
    assert seg.roi_counts["window"] == 1 and labels.shape == (6, 256, 288)


def test_roi_off_never_probes(tiny_checkpoint):
    seg, net = _roi_segmenter(tiny_checkpoint)
    seg.roi = False
    seg._forward(_stack())
    assert net.shapes == [(6, 1, 256, 288)] and sum(seg.roi_counts.values()) == 0


@pytest.mark.parametrize("vendor", ["siemens", "philips", "ge"])
def test_shipped_model_segments_the_phantom_in_a_heart_window(vendor):
    """In a heart window, the shipped model still segments the vendor-styled phantom (Dice >=
    0.80 per structure, as on the whole image), and the window was used."""
    ph = make_phantom(PhantomConfig(seed=5, vendor=vendor))
    seg = Segmenter(roi=True)
    for phase in ph.images:
        pred, _ = seg.predict_volume(ph.images[phase], ph.spacing)
        m = compute_metrics(pred, ph.labels[phase], ph.spacing)
        assert min(m["LV_dice"], m["MYO_dice"], m["RV_dice"]) >= 0.80, m
    assert seg.roi_counts["window"] >= 1
