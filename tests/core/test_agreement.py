"""viewer.agreement: per-class probability at annotated points and the heatmap AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from viewer.agreement import AgreementResult, agreement, agreement_to_csv, sample_at_points
from viewer.annotations import Annotations
from viewer.heatmap import heatmap_shape
from viewer.metrics import heatmap_auc, heatmap_window_labels

W, H, S = 200, 160, 8


def test_sample_picks_the_cell_with_the_nearest_window_centre():
    rows, cols = heatmap_shape(H, W, S)
    hm = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    # Centre of cell (r=3, c=5) is (56, 40); 3 px off still maps to it; 5 px off maps to the next.
    pts = np.array([[56, 40], [59, 37], [61, 40], [56, 45], [10, 40], [12.1, 40], [W - 1, H - 1]], dtype=float)
    got = sample_at_points(hm, pts, S)
    assert got[0] == hm[3, 5] and got[1] == hm[3, 5]
    assert got[2] == hm[3, 6] and got[3] == hm[4, 5]
    assert math.isnan(got[4])  # x = 10 < 16 - 4: nearest centre would be column -1: skipped
    assert got[5] == hm[3, 0]
    assert math.isnan(got[6])  # past the last window centre on the right: skipped


def test_agreement_means_skips_nan_and_shares_the_evaluate_auc():
    rows, cols = heatmap_shape(H, W, S)
    tumour = np.array([[56.0, 40.0], [150.0, 100.0], [2.0, 2.0]])
    other = np.array([[120.0, 30.0]])
    ann = Annotations.from_pixels({"tumor": tumour, "non_tumor": other, "mitosis": []}, W, H)
    # Use the points as the annotations give them back (normalised and re-scaled).
    tumour, other = ann.pixel_points("tumor", W, H), ann.pixel_points("non_tumor", W, H)
    everything = np.concatenate([tumour, other])
    labels = heatmap_window_labels(tumour, everything, (rows, cols), S)
    hm = np.where(labels == 1, 0.9, 0.2).astype(np.float32)
    result = agreement(hm, ann, W, H, stride=S)
    assert isinstance(result, AgreementResult)
    by = result.by_class()
    assert by["tumor"].points == 3 and by["tumor"].sampled == 2  # (2, 2) is outside the band
    assert by["tumor"].mean_probability == pytest.approx(0.9)
    assert by["non_tumor"].sampled == 1 and by["non_tumor"].mean_probability == pytest.approx(0.2)
    assert by["mitosis"].points == 0 and math.isnan(by["mitosis"].mean_probability)
    assert result.auc == 1.0 == heatmap_auc(hm, tumour, everything, S)
    assert result.positive_windows == int((labels == 1).sum()) and result.negative_windows == int((labels == 0).sum())

    # "Not computed yet" cells are ignored, both for the means and the AUC.
    partial = hm.copy()
    partial[:, cols // 2 :] = np.nan
    res2 = agreement(partial, ann, W, H, stride=S)
    assert res2.by_class()["tumor"].sampled == 1
    assert res2.negative_windows < result.negative_windows
    all_nan = np.full_like(hm, np.nan)
    res3 = agreement(all_nan, ann, W, H, stride=S)
    assert math.isnan(res3.auc) and res3.by_class()["tumor"].sampled == 0


def test_agreement_rejects_a_heatmap_of_the_wrong_shape():
    ann = Annotations.from_pixels({"tumor": [[50, 50]]}, W, H)
    with pytest.raises(ValueError, match="shape"):
        agreement(np.zeros((3, 3)), ann, W, H)


def test_agreement_csv_is_written_atomically(tmp_path):
    rows, cols = heatmap_shape(H, W, S)
    ann = Annotations.from_pixels({"tumor": [[56, 40]]}, W, H)
    hm = np.full((rows, cols), 0.25, np.float32)
    result = agreement(hm, ann, W, H)
    path = tmp_path / "agreement.csv"
    agreement_to_csv(result, path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("row,class,points,sampled_points,mean_probability,auc")
    assert lines[1].startswith("class,tumor,1,1,0.250000")
    assert lines[-1].startswith("heatmap_auc,tumor,,,,0.500000")  # constant heatmap: chance
    assert [p.name for p in tmp_path.iterdir()] == ["agreement.csv"]
