"""Patch geometry (hw3lib/core/patches.py): the grid, coverage against a pixel-by-pixel reference, and the
one pointing game that P3's localisation and the training curves both play."""

import numpy as np
import pytest
import torch

from hw3lib.core.patches import PatchGrid, points_at


def covered_by_centres(grid: PatchGrid, box, size) -> np.ndarray:
    """The reference, patch by patch: is the patch's centre pixel position inside the box? (else the
    patch holding the box's centre)."""
    h, w = size
    x0, y0, x1, y1 = box
    ph, pw = h / grid.rows, w / grid.cols
    out = np.array([x0 <= (c + 0.5) * pw < x1 and y0 <= (r + 0.5) * ph < y1
                    for r in range(grid.rows) for c in range(grid.cols)])
    if not out.any():
        out[int((y0 + y1) / 2 // ph) * grid.cols + int((x0 + x1) / 2 // pw)] = True
    return out


def test_grid_from_tokens_and_from_a_vit():
    import timm

    assert PatchGrid.of_tokens(197) == PatchGrid(14, 14, 1) and PatchGrid.of_tokens(64) == PatchGrid(8, 8, 0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=96, patch_size=12, depth=1,
                            num_classes=0, reg_tokens=2, no_embed_class=True)
    g = PatchGrid.of_encoder(vit)
    assert g == PatchGrid(8, 8, 3) and g.tokens == 67


@pytest.mark.parametrize("grid,size", [(PatchGrid(8, 8), (96, 96)), (PatchGrid(4, 6), (48, 96))])
def test_coverage_equals_the_reference(grid, size):
    rng = np.random.default_rng(0)
    h, w = size
    for _ in range(300):
        x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        box = (x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1)))
        assert np.array_equal(grid.covered(box, size), covered_by_centres(grid, box, size)), box
    # by hand: a 2 x 2-cell object on 12-pixel cells, its tight box a little inside them
    assert np.flatnonzero(PatchGrid(8, 8).covered((25, 26, 46, 47), (96, 96))).tolist() == [18, 19, 26, 27]
    # a box between patch centres covers the patch its centre lies in
    assert np.flatnonzero(PatchGrid(8, 8).covered((13, 13, 17, 17), (96, 96))).tolist() == [9]


def test_token_masks_leave_the_prefix_out():
    m = PatchGrid(2, 2, 1).token_masks([(0, 0, 10, 10), (10, 10, 20, 20)], (20, 20))  # centres at 5 and 15
    assert m.tolist() == [[False, True, False, False, False], [False, False, False, False, True]]


def test_points_at_on_hand_made_maps():
    maps = torch.tensor([[0.1, 0.7, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2]])
    covered = torch.tensor([False, True, False, False])
    assert points_at(maps, covered).tolist() == [True, False]
    assert points_at(maps, torch.tensor([[False, True, False, False], [True, False, False, False]])).tolist() == [True, True]


def test_p3_and_the_training_curves_play_the_same_game():
    """The same attention and box give the same verdict through P3's localisation helpers and through
    the training curves' `points_inside` (which sees the prefix token too)."""
    from hw3lib.attention.maps import _covers, patch_distribution
    from hw3lib.training.attention_losses import points_inside

    grid, size = PatchGrid(4, 4, 1), (48, 48)
    rng = np.random.default_rng(1)
    for _ in range(200):
        att = torch.from_numpy(rng.dirichlet(np.ones(grid.tokens) * 0.3)).float()[None, None]  # (1, 1, S)
        x0, y0 = (int(v) for v in rng.integers(0, 40, size=2))
        box = (x0, y0, x0 + int(rng.integers(4, 20)), y0 + int(rng.integers(4, 20)))
        p3 = bool(points_at(patch_distribution(att[0], grid.prefix)[0], _covers(grid, [box], size)))
        where = grid.token_masks([box], size)[None]  # (1, 1, S)
        curve = points_inside(att, where, torch.tensor([[True]]), grid.prefix).item()
        assert p3 == curve
