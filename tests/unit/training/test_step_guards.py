"""The step guards: skipped steps are counted, survive a checkpoint, and stop the run past their bound."""

import logging

import pytest

from forgetting.training.step_guards import NonFiniteStepsError, SkippedSteps


def test_skipped_steps_are_logged_with_their_clips_and_bounded(caplog):
    skipped = SkippedSteps()
    with caplog.at_level(logging.WARNING, logger="forgetting.training.trainer"):
        skipped.record(7, ["a.mp3", "b.mp3"], max_fraction=0.01, max_steps=200)  # 2 allowed
        skipped.record(9, [], max_fraction=0.01, max_steps=200)
    assert "step 7 skipped: its loss or gradient is not finite; its clips: a.mp3, b.mp3" in caplog.text
    assert skipped.state() == {"args": {}, "attributes": {"steps": [7, 9]}}  # what a checkpoint stores
    with pytest.raises(NonFiniteStepsError, match=r"3 of 200 optimiser steps skipped .* \(steps \[7, 9, 12\]\), more "
                                                  r"than max_skipped_fraction = 0\.01; the last one's clips: c\.mp3"):
        skipped.record(12, ["c.mp3"], max_fraction=0.01, max_steps=200)
