"""The seam ratio of metrics.continuity: 1 for a video that moves evenly, large for a cut, and refusals."""

from __future__ import annotations

import pytest
import torch

from vqvdm_scale.metrics.continuity import frame_steps, seam_ratio


def test_even_motion_has_ratio_one_and_a_cut_a_large_one() -> None:
    ramp = torch.arange(12.0).view(1, 1, 12, 1, 1).expand(2, 3, 12, 2, 2)  # moves by 1 each frame
    assert torch.allclose(frame_steps(ramp), torch.ones(2, 11))
    assert torch.allclose(seam_ratio(ramp, [4, 8]), torch.ones(2))
    cut = ramp.clone()
    cut[:, :, 8:] += 3.0  # the third clip starts 3 further on: its seam step is 4, squared 16
    ratio = seam_ratio(cut, [4, 8])
    assert torch.allclose(ratio, torch.full((2,), (1 + 16) / 2 / 1))


@pytest.mark.parametrize("seams", [[], [0], [12]])
def test_seams_must_be_inside_the_video(seams: list[int]) -> None:
    with pytest.raises(ValueError, match="seams"):
        seam_ratio(torch.zeros(1, 1, 12, 2, 2), seams)


def test_needs_steps_inside_the_clips() -> None:
    with pytest.raises(ValueError, match="inside the clips"):
        seam_ratio(torch.zeros(1, 1, 2, 2, 2), [1])
    with pytest.raises(ValueError, match="T >= 2"):
        frame_steps(torch.zeros(1, 1, 1, 2, 2))
