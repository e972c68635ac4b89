"""Put two volumes of one subject on one voxel grid: from scanner coordinates, optionally refined by rigid registration.

Two contrasts of a visit are rarely on the same grid (IXI's T1 is sagittal 256x256x150, its T2
axial 256x256x130). Evaluation compares them voxel by voxel, so the reference contrast is
resampled onto the source contrast's grid: the axial slice array of each volume gets the affine
that maps its (slice, row, column) indices to scanner (RAS) millimetres, and every voxel of the
fixed grid is sampled trilinearly from the moving volume at the same scanner position. Outside
the moving volume's field of view the result is 0 (air).

`rigid` registration (SimpleITK, the optional extra `registration`) then corrects motion between
the series: a rigid transform found by maximising Mattes mutual information, which works across
contrasts, starting from the scanner-coordinate alignment.
"""

import numpy as np
from nibabel.orientations import inv_ornt_aff
from scipy import ndimage

from data.readers import BadFileError, Volume

REGISTER = ("none", "world", "rigid")
MISSING_EXTRA = 'rigid registration needs SimpleITK: pip install -e ".[registration]"'
# Affines that differ by less than this (mm, per matrix entry) describe the same grid.
SAME_GRID_TOLERANCE = 1e-3
# Sample positions within this many voxels outside the volume count as on its edge (rounding of affines).
EDGE_SNAP = 1e-3
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def axial_affine(volume: Volume) -> np.ndarray | None:
    """4x4 map from the axial index (slice, row, column) of `volume.data` to scanner RAS mm; None without geometry.

    readers.py lays volumes out as slice[s][r, c] = canonical[X-1-c, Y-1-r, s] of the RAS-reoriented
    voxels (`meta["ornt"]`), so the map is the file's voxel affine composed with that reorientation.
    """
    voxel_affine = _voxel_affine(volume)
    if voxel_affine is None:
        return None
    slices, rows, columns = volume.data.shape
    canonical_to_voxel = inv_ornt_aff(volume.meta["ornt"], _voxel_shape(volume))
    axial_to_canonical = np.array([[0, 0, -1, columns - 1], [0, -1, 0, rows - 1], [1, 0, 0, 0], [0, 0, 0, 1]], float)
    return voxel_affine @ canonical_to_voxel @ axial_to_canonical


def _voxel_shape(volume: Volume) -> tuple[int, int, int]:
    """The shape of the voxel array the orientation was computed for (readers.py's [I, J, K])."""
    slices, rows, columns = volume.data.shape
    ornt = volume.meta["ornt"]
    canonical_shape = (columns, rows, slices)
    shape = [0, 0, 0]
    for voxel_axis, (canonical_axis, _) in enumerate(ornt):
        shape[voxel_axis] = canonical_shape[int(canonical_axis)]
    return tuple(shape)


def _voxel_affine(volume: Volume) -> np.ndarray | None:
    if volume.kind == "nifti":
        return np.asarray(volume.meta["image"].affine, float)
    if volume.kind == "dicom":
        return _dicom_affine(volume)
    return None


def _dicom_affine(volume: Volume) -> np.ndarray | None:
    """The series' voxel (column, row, slice) to RAS affine from ImagePositionPatient, ImageOrientationPatient,
    PixelSpacing and the slice positions; None when a tag is missing or the series is multi-frame."""
    datasets = volume.meta["datasets"]
    tags = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
    if any(int(d.get("NumberOfFrames", 1) or 1) > 1 or not all(tag in d for tag in tags) for d in datasets):
        return None
    first = datasets[0]
    cosines = np.array(first.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    positions = np.array([d.ImagePositionPatient for d in datasets], float)
    normal = np.cross(cosines[:3], cosines[3:])
    if len(positions) > 1:
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
    else:
        step = normal * float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = cosines[:3] * column_spacing  # along a row: the column index grows
    affine[:3, 1] = cosines[3:] * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = positions[0]
    affine[:3] = _LPS_TO_RAS @ affine[:3]
    return affine


def pixel_spacing(volume: Volume) -> tuple[float, float] | None:
    """The (row, column) spacing in mm of the volume's axial slices; None without scanner geometry (images)."""
    affine = axial_affine(volume)
    if affine is None:
        return None
    return float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 2]))


def same_grid(fixed: Volume, moving: Volume) -> bool:
    """Same shape and, where both have scanner geometry, the same affine."""
    if fixed.data.shape != moving.data.shape:
        return False
    fixed_affine, moving_affine = axial_affine(fixed), axial_affine(moving)
    if fixed_affine is None or moving_affine is None:
        return True
    return bool(np.abs(fixed_affine - moving_affine).max() < SAME_GRID_TOLERANCE)


def checked_affine(volume: Volume, why: str) -> np.ndarray:
    affine = axial_affine(volume)
    if affine is None:
        raise BadFileError(f"{volume.path}: no scanner geometry (NIfTI affine, or DICOM position, orientation and "
                           f"pixel spacing of single-frame files) to {why}")
    return affine


def resample_like(moving: Volume, fixed: Volume, register: str = "world") -> np.ndarray:
    """`moving`'s data sampled trilinearly on `fixed`'s axial grid (float32, 0 outside `moving`).

    register="world" aligns by scanner coordinates; "rigid" adds a rigid registration found by
    SimpleITK (raises ImportError with MISSING_EXTRA when it is not installed).
    """
    if register not in ("world", "rigid"):
        raise ValueError(f"register must be 'world' or 'rigid' to resample, not {register!r}")
    fixed_affine = checked_affine(fixed, f"resample {moving.path} onto it")
    moving_affine = checked_affine(moving, f"resample it onto {fixed.path}")
    world_motion = np.eye(4)
    if register == "rigid":
        world_motion = rigid_transform(fixed.data, fixed_affine, moving.data, moving_affine)
    fixed_to_moving = np.linalg.inv(moving_affine) @ world_motion @ fixed_affine
    return sample(moving.data, fixed_to_moving, fixed.data.shape)


def sample(data: np.ndarray, index_map: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Trilinear samples of `data` at index_map @ (i, j, k, 1) for every index of `shape`, slice by slice.

    Positions a rounding error outside the volume are put on its edge, so a one-slice volume on
    its own plane keeps its values; farther outside gives 0.
    """
    out = np.zeros(shape, np.float32)
    rows, columns = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    plane = np.stack([np.zeros(rows.size), rows.ravel(), columns.ravel(), np.ones(rows.size)])
    upper = np.array(data.shape, float)[:, None] - 1
    for index in range(shape[0]):
        plane[0] = index
        coordinates = (index_map @ plane)[:3]
        snapped = np.clip(coordinates, 0, upper)
        coordinates = np.where(np.abs(coordinates - snapped) < EDGE_SNAP, snapped, coordinates)
        out[index] = ndimage.map_coordinates(data, coordinates, order=1, mode="constant", cval=0.0).reshape(shape[1:])
    return out


def rigid_transform(fixed: np.ndarray, fixed_affine: np.ndarray, moving: np.ndarray,
                    moving_affine: np.ndarray) -> np.ndarray:
    """The 4x4 rigid map of scanner coordinates, fixed position -> moving position, that best aligns the contrasts.

    Mattes mutual information (50 bins, 20% of the voxels), a three-level pyramid, starting from the
    scanner-coordinate alignment and rotating about the fixed volume's centre.
    """
    try:
        import SimpleITK as sitk
    except ImportError as error:
        raise ImportError(MISSING_EXTRA) from error
    if min(fixed.shape[0], moving.shape[0]) < 4:
        raise ValueError("rigid registration needs 3D volumes (at least 4 slices each); use --register=world")
    fixed_image, moving_image = _sitk_image(sitk, fixed, fixed_affine), _sitk_image(sitk, moving, moving_affine)
    centre = fixed_affine @ np.append((np.array(fixed.shape) - 1) / 2, 1)
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre[:3].tolist())
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.2, seed=1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=200,
                                                    relaxationFactor=0.5)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2.0, 1.0, 0.0])
    method.SetInitialTransform(transform, inPlace=True)
    method.Execute(fixed_image, moving_image)
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(transform.GetMatrix()).reshape(3, 3)
    matrix[:3, 3] = np.array(transform.GetTranslation()) + centre[:3] - matrix[:3, :3] @ centre[:3]
    return matrix


def _sitk_image(sitk, data: np.ndarray, affine: np.ndarray):
    """A SimpleITK image of the axial array with its scanner geometry (SimpleITK indexes (column, row, slice))."""
    image = sitk.GetImageFromArray(np.asarray(data, np.float32))
    columns_rows_slices = affine[:3, [2, 1, 0]]
    spacing = np.linalg.norm(columns_rows_slices, axis=0)
    image.SetSpacing(spacing.tolist())
    image.SetDirection((columns_rows_slices / spacing).ravel().tolist())
    image.SetOrigin(affine[:3, 3].tolist())
    return image
