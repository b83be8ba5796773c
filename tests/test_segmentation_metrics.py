"""samlib.train's segmentation metrics, on inputs whose answers are worked out by hand."""
import pytest
import torch

from samlib.train import history_peak, segmentation_memorization, segmentation_scores, trivial_segmentation_scores


def test_scores_of_a_hand_confusion():
    # rows: true background, class 1, class 2, class 3 (never occurs, never predicted)
    conf = torch.tensor([[8, 1, 1, 0],
                         [0, 3, 1, 0],
                         [2, 0, 2, 0],
                         [0, 0, 0, 0]])
    s = segmentation_scores(conf)
    bg, c1, c2 = 8 / (10 + 10 - 8), 3 / (4 + 4 - 3), 2 / (4 + 4 - 2)
    assert s["class_iou"][:3] == pytest.approx([bg, c1, c2]) and len(s["class_iou"]) == 4 and s["class_iou"][3] is None
    assert s["background_iou"] == pytest.approx(bg)
    assert s["garment_miou"] == pytest.approx((c1 + c2) / 2)            # class 3 is absent: not averaged
    assert s["miou"] == pytest.approx((bg + c1 + c2) / 3)
    assert s["pixel_acc"] == pytest.approx(13 / 18)


def test_a_class_only_predicted_counts_with_iou_zero():
    conf = torch.tensor([[5, 0, 1],
                         [0, 2, 0],
                         [0, 0, 0]])           # class 2 never occurs but is predicted once
    s = segmentation_scores(conf)
    assert s["class_iou"][2] == 0.0 and s["garment_miou"] == pytest.approx((1.0 + 0.0) / 2)


def test_perfect_memorizer_has_no_chance_component():
    clean = torch.tensor([[1, 1, 2, 2, 0, 0], [3, 3, 1, 2, 0, 0]])
    noisy = torch.tensor([[1, 3, 2, 1, 0, 0], [3, 3, 1, 2, 0, 0]])
    m = segmentation_memorization(noisy.clone(), noisy, clean, num_classes=4)   # predicts the noisy masks
    assert m["memorized"] == 1.0 and m["memorized_chance"] == 0.0 and m["memorized_excess"] == 1.0
    assert m["train_noisy_acc"] == 1.0 and m["train_clean_acc"] == pytest.approx(10 / 12)


def test_one_colour_painter_memorizes_only_by_chance():
    # every garment painted class 1: the flips *to* class 1 are "memorized", but the model predicts class 1
    # for every unrelabelled garment pixel too, so chance explains all of it
    clean = torch.tensor([2, 2, 2, 3, 3, 3, 1, 1, 0, 0])
    noisy = torch.tensor([1, 3, 2, 1, 3, 3, 1, 1, 0, 0])   # 2->1, 2->3, 3->1 relabelled
    pred = torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0, 0])
    m = segmentation_memorization(pred, noisy, clean, num_classes=4)
    assert m["memorized"] == pytest.approx(2 / 3)
    assert m["memorized_chance"] == pytest.approx(2 / 3)   # P(pred=1 | 2) = P(pred=1 | 3) = 1, P(pred=3 | 2) = 0
    assert m["memorized_excess"] == pytest.approx(0.0)


def test_chance_reads_the_confusion_of_unrelabelled_pixels():
    # unrelabelled class-2 pixels: predicted 2, 2, 3, 1 -> P(3 | 2) = 1/4, P(1 | 2) = 1/4
    clean = torch.tensor([2, 2, 2, 2, 2, 2, 0])
    noisy = torch.tensor([2, 2, 2, 2, 3, 1, 0])
    pred = torch.tensor([2, 2, 3, 1, 3, 2, 0])   # the flip to 3 is reproduced, the flip to 1 is not
    m = segmentation_memorization(pred, noisy, clean, num_classes=4)
    assert m["memorized"] == pytest.approx(1 / 2)
    assert m["memorized_chance"] == pytest.approx((1 / 4 + 1 / 4) / 2)
    assert m["memorized_excess"] == pytest.approx(1 / 2 - 1 / 4)


def test_clean_masks_report_no_memorization():
    clean = torch.tensor([[0, 1, 2]])
    m = segmentation_memorization(torch.tensor([[0, 1, 1]]), clean, clean, num_classes=3)
    assert "memorized" not in m and m["train_clean_acc"] == pytest.approx(2 / 3)
    assert m["train_clean_garment_miou"] == pytest.approx((1 / 2 + 0) / 2)


def test_history_peak_final_drop_and_early_stopping():
    history = [{"epoch": 1, "train_loss": 1.0},
               {"epoch": 5, "test_garment_miou": 0.30, "val_garment_miou": 0.28},
               {"epoch": 10, "test_garment_miou": 0.45, "val_garment_miou": 0.40},
               {"epoch": 15, "test_garment_miou": 0.41, "val_garment_miou": 0.42},
               {"epoch": 20, "test_garment_miou": 0.38, "val_garment_miou": 0.35}]
    h = history_peak(history, "test_garment_miou", select="val_garment_miou")
    assert (h["peak"], h["peak_epoch"], h["final"], h["final_epoch"]) == (0.45, 10, 0.38, 20)
    assert h["drop"] == pytest.approx(0.07)
    assert (h["stopped"], h["stopped_epoch"]) == (0.41, 15)
    with pytest.raises(ValueError, match="test_miou"):
        history_peak(history, "test_miou")


def test_trivial_baseline_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [0, 2, 2, 3]])
    s = trivial_segmentation_scores(target, garment_class=1, num_classes=4)
    # background perfect (IoU 1); class 1: 2 right of 5 predicted; classes 2, 3 never predicted (IoU 0)
    assert s["class_iou"] == pytest.approx([1.0, 2 / 5, 0.0, 0.0])
    assert s["garment_miou"] == pytest.approx((2 / 5) / 3) and s["pixel_acc"] == pytest.approx(5 / 8)
