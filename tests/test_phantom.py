"""The synthetic phantom: signal physics against hand arithmetic, anatomy invariants, seeding, splits, speed."""

import math

import numpy as np
import pytest

from data import phantom

SUBJECTS = range(6)
SIZE = 256
CORNERS = (slice(0, 30), slice(0, 30)), (slice(0, 30), slice(-30, None)), (slice(-30, None), slice(0, 30))


def far_air(image):
    """Pixels in three image corners: air that no head and no blur reaches."""
    return np.concatenate([image[corner].ravel() for corner in CORNERS])


def hand_spin_echo(t1, t2, pd, tr, te):
    return pd * (1 - math.exp(-tr / t1)) * math.exp(-te / t2)


def mask_mean(image, maps, tissue):
    """Mean signal over pixels that are more than 90 % one tissue."""
    mask = maps[tissue] > 0.9
    assert mask.sum() >= 20, f"too few pure {tissue} pixels to measure"
    return float(image[mask].mean())


@pytest.mark.parametrize(
    "tissue, contrast, expected",
    [
        # Independent arithmetic: PD * (1 - exp(-TR/T1)) * exp(-TE/T2).
        ("csf", "t1", 1.0 * (1 - math.exp(-500 / 2569)) * math.exp(-15 / 329)),
        ("grey_matter", "t1", 0.86 * (1 - math.exp(-500 / 833)) * math.exp(-15 / 83)),
        ("white_matter", "t1", 0.77 * (1 - math.exp(-500 / 500)) * math.exp(-15 / 70)),
        ("csf", "t2", 1.0 * (1 - math.exp(-4000 / 2569)) * math.exp(-100 / 329)),
        ("grey_matter", "t2", 0.86 * (1 - math.exp(-4000 / 833)) * math.exp(-100 / 83)),
        ("white_matter", "t2", 0.77 * (1 - math.exp(-4000 / 500)) * math.exp(-100 / 70)),
    ],
)
def test_spin_echo_matches_hand_arithmetic(tissue, contrast, expected):
    t1, t2, pd = phantom.TISSUES[tissue]
    tr, te = phantom.SEQUENCES[contrast]
    assert float(phantom.spin_echo(pd, t1, t2, tr, te)) == pytest.approx(expected, rel=1e-12)
    assert phantom.tissue_signal(tissue, contrast) == pytest.approx(expected, rel=1e-12)


def test_spin_echo_known_numbers_and_broadcasting():
    # White matter T1-weighted: 0.77 * (1 - e^-1) * e^(-15/70) = 0.392851
    assert float(phantom.spin_echo(0.77, 500.0, 70.0, 500.0, 15.0)) == pytest.approx(0.392851, abs=1e-6)
    pd = np.array([[1.0, 0.86, 0.77]])
    t1 = np.array([[2569.0, 833.0, 500.0]])
    t2 = np.array([[329.0, 83.0, 70.0]])
    signal = phantom.spin_echo(pd, t1, t2, 4000.0, 100.0)
    assert signal.shape == (1, 3)
    expected = [hand_spin_echo(a, b, c, 4000.0, 100.0) for c, a, b in zip(pd[0], t1[0], t2[0])]
    np.testing.assert_allclose(signal[0], expected, rtol=1e-12)


def test_constants_are_brainweb_and_protocol_values():
    assert phantom.TISSUES["csf"] == (2569.0, 329.0, 1.0)
    assert phantom.TISSUES["grey_matter"] == (833.0, 83.0, 0.86)
    assert phantom.TISSUES["white_matter"] == (500.0, 70.0, 0.77)
    assert phantom.TISSUES["fat"] == (350.0, 70.0, 1.0)
    assert phantom.SEQUENCES == {"t1": (500.0, 15.0), "t2": (4000.0, 100.0)}
    # Cortical bone must be near-black in both contrasts.
    for contrast in phantom.SEQUENCES:
        assert phantom.tissue_signal("bone", contrast) < 0.01 * phantom.tissue_signal("white_matter", contrast)


@pytest.mark.parametrize("contrast", ["t1", "t2"])
def test_render_is_float32_finite_nonnegative_and_unnormalised(contrast):
    image = phantom.render(3, contrast)
    assert image.shape == (SIZE, SIZE)
    assert image.dtype == np.float32
    assert np.isfinite(image).all()
    assert image.min() >= 0
    # Raw signal scale: nothing is rescaled to [0, 1] or [0, 255].
    assert 0.1 < np.percentile(image, 99.5) < 1.0


def test_render_honours_size():
    assert phantom.render(0, "t2", size=128).shape == (128, 128)


def test_unknown_contrast_raises():
    with pytest.raises(ValueError, match="contrast"):
        phantom.render(0, "flair")
    with pytest.raises(ValueError, match="contrast"):
        phantom.tissue_signal("csf", "T1")


def test_same_seed_same_images_and_different_seed_or_subject_different():
    np.testing.assert_array_equal(phantom.render(5, "t1", seed=7), phantom.render(5, "t1", seed=7))
    assert not np.array_equal(phantom.render(5, "t1", seed=7), phantom.render(5, "t1", seed=8))
    assert not np.array_equal(phantom.render(5, "t1", seed=7), phantom.render(6, "t1", seed=7))
    maps_a, maps_b = phantom.tissue_maps(5, seed=7), phantom.tissue_maps(5, seed=8)
    assert not np.array_equal(maps_a["white_matter"], maps_b["white_matter"])


def noise_free(maps, contrast):
    """The image the signal equation alone gives for these tissue fractions: no blur, bias or noise."""
    return sum(maps[name] * phantom.tissue_signal(name, contrast) for name in phantom.TISSUES)


@pytest.mark.parametrize("pair", ["render", "paired_test"])
def test_anatomy_is_shared_across_contrasts_but_noise_is_not(pair):
    """Both contrasts of one subject are explained by that subject's tissue maps, not by another subject's."""
    if pair == "render":
        subject, (t1, t2) = 2, (phantom.render(2, "t1"), phantom.render(2, "t2"))
    else:
        subject, (t1, t2) = 1_000_000, (images[0] for images in phantom.paired_test(1))
    own, other = phantom.tissue_maps(subject), phantom.tissue_maps(subject + 1)
    for image, contrast in ((t1, "t1"), (t2, "t2")):
        # Blur, a bias of at most 18 % and noise of 2-4 % of white matter leave about 0.99 correlation with
        # the own anatomy; another head overlaps in outline only (about 0.7).
        assert np.corrcoef(image.ravel(), noise_free(own, contrast).ravel())[0, 1] > 0.97, contrast
        assert np.corrcoef(image.ravel(), noise_free(other, contrast).ravel())[0, 1] < 0.85, contrast
    # On the same pixels, contrast inverts as the signal equation says: CSF dark in T1, bright in T2.
    csf, white = own["csf"] > 0.9, own["white_matter"] > 0.9
    for image, contrast in ((t1, "t1"), (t2, "t2")):
        expected = phantom.tissue_signal("csf", contrast) / phantom.tissue_signal("white_matter", contrast)
        assert image[csf].mean() / image[white].mean() == pytest.approx(expected, rel=0.15), contrast  # bias, blur
    # Background noise comes from independent streams per contrast.
    correlation = np.corrcoef(far_air(t1), far_air(t2))[0, 1]
    assert abs(correlation) < 0.05


@pytest.mark.parametrize("subject_id", SUBJECTS)
def test_tissue_maps_are_fractions_with_air_outside_the_head(subject_id):
    maps = phantom.tissue_maps(subject_id)
    assert set(maps) == set(phantom.TISSUES)
    for name, fraction in maps.items():
        assert fraction.shape == (SIZE, SIZE) and fraction.dtype == np.float32, name
        assert fraction.min() >= -1e-6, name
    total = sum(maps.values())
    assert total.max() <= 1 + 1e-6
    border = np.ones((SIZE, SIZE), bool)
    border[4:-4, 4:-4] = False
    assert np.all(total[border] == 0), "tissue reaches the edge of the field of view"
    # Partial volume: a real set of mixed pixels along the edges, not a binary mask.
    assert np.count_nonzero((total > 0.05) & (total < 0.95)) > 100
    # Head size: the long axis spans roughly 180-220 px, the short axis is narrower.
    head = total > 0.5
    extents = sorted([np.ptp(np.nonzero(head.any(axis=0))[0]) + 1, np.ptp(np.nonzero(head.any(axis=1))[0]) + 1])
    assert 180 <= extents[1] <= 235 and 150 <= extents[0] <= extents[1]
    # The brain centre is fully tissue, and every anatomical compartment is there.
    assert total[SIZE // 2, SIZE // 2] == pytest.approx(1.0, abs=1e-6)
    for name in ("csf", "grey_matter", "white_matter", "fat", "muscle_skin", "bone"):
        assert maps[name].sum() > 200, name


@pytest.mark.parametrize("subject_id", SUBJECTS)
def test_contrast_ordering_inside_pure_tissue_masks(subject_id):
    maps = phantom.tissue_maps(subject_id)
    t1, t2 = phantom.render(subject_id, "t1"), phantom.render(subject_id, "t2")
    csf, grey, white = (mask_mean(t1, maps, name) for name in ("csf", "grey_matter", "white_matter"))
    assert white > grey > csf
    csf, grey, white = (mask_mean(t2, maps, name) for name in ("csf", "grey_matter", "white_matter"))
    assert csf > grey > white


def test_air_is_rician_noise_at_a_few_percent_of_white_matter():
    for contrast in ("t1", "t2"):
        air = far_air(phantom.render(4, contrast))
        # Pure noise in a magnitude image is Rayleigh: mean = sigma * sqrt(pi / 2).
        sigma = air.mean() / math.sqrt(math.pi / 2)
        white = phantom.tissue_signal("white_matter", contrast)
        assert 0.015 * white < sigma < 0.045 * white


def test_lesion_present_in_some_subjects_only_and_t2_bright_t1_dark():
    with_lesion = [i for i in range(40) if phantom.tissue_maps(i)["lesion"].max() > 0.5]
    assert 4 <= len(with_lesion) <= 20  # about 30 % of 40
    for subject_id in with_lesion[:3]:
        maps = phantom.tissue_maps(subject_id)
        lesion = maps["lesion"] > 0.9
        rows, cols = np.nonzero(lesion)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        near = (yy - rows.mean()) ** 2 + (xx - cols.mean()) ** 2 < 20**2
        white = near & (maps["white_matter"] > 0.9)  # local, so the bias field cancels
        t1, t2 = phantom.render(subject_id, "t1"), phantom.render(subject_id, "t2")
        assert t2[lesion].mean() > 1.5 * t2[white].mean()
        assert t1[lesion].mean() < 0.95 * t1[white].mean()


def test_unpaired_train_domains_use_different_subjects():
    t1, t2 = phantom.unpaired_train(2, seed=3)
    assert t1.shape == t2.shape == (2, SIZE, SIZE)
    assert t1.dtype == t2.dtype == np.float32
    for i in range(2):
        np.testing.assert_array_equal(t1[i], phantom.render(i, "t1", seed=3))
        np.testing.assert_array_equal(t2[i], phantom.render(2 + i, "t2", seed=3))
    empty_t1, empty_t2 = phantom.unpaired_train(0)
    assert empty_t1.shape == empty_t2.shape == (0, SIZE, SIZE)


def test_paired_test_is_one_anatomy_per_pair_and_disjoint_from_training():
    t1, t2 = phantom.paired_test(2, seed=3)
    assert t1.shape == t2.shape == (2, SIZE, SIZE)
    assert t1.dtype == t2.dtype == np.float32
    for i in range(2):
        np.testing.assert_array_equal(t1[i], phantom.render(1_000_000 + i, "t1", seed=3))
        np.testing.assert_array_equal(t2[i], phantom.render(1_000_000 + i, "t2", seed=3))
    # Same anatomy: the head masks of a pair agree far better than across subjects.
    heads = [image > 0.1 * np.percentile(image, 99.5) for image in (t1[0], t2[0], t1[1])]

    def dice(a, b):
        return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))

    assert dice(heads[0], heads[1]) > 0.97
    assert dice(heads[0], heads[1]) > dice(heads[0], heads[2]) + 0.03


def test_bias_field_is_smooth_and_within_its_amplitude():
    low, high = phantom.BIAS_AMPLITUDE
    for seed in range(5):
        gain = phantom._bias_field(np.random.default_rng(seed), SIZE)
        largest = np.abs(np.log(gain)).max()
        assert low - 1e-5 <= largest <= high + 1e-5
        assert np.abs(np.diff(gain, axis=0)).max() < 0.01 and np.abs(np.diff(gain, axis=1)).max() < 0.01
