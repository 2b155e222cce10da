"""A synthetic ultrasound DICOM study written with pydicom (tests of the reports and the PACS round
trip): phantom images as one study of one patient, with the identifiers a real study carries; and
:func:`us_dataset`, the empty ultrasound DICOM every test that writes one starts from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "MRN-4417-22"
BIRTH_DATE = "19610203"
ACCESSION = "ACC-99817"
INSTITUTION = "St Elsewhere Hospital"


def us_dataset(sop_class: str = US_IMAGE_STORAGE) -> Dataset:
    """An ultrasound DICOM dataset with nothing in it yet but its file meta (``sop_class``, a new SOP
    Instance UID, explicit VR little endian), the same SOP class and instance, and Modality US: ready
    for a test's header and pixels, then ``save_as(path, enforce_file_format=True)``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    return ds


def write_study(
    folder: Path, images: list[np.ndarray], study_uid: str | None = None
) -> tuple[list[Path], str]:
    """Write ``images`` (grey uint8) as the instances of one ultrasound series of one study; return the
    files and the Study Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i, pixels in enumerate(images):
        ds = us_dataset()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            PATIENT_NAME,
            PATIENT_ID,
            BIRTH_DATE,
            "F",
        )
        ds.AccessionNumber, ds.InstitutionName, ds.StudyID = ACCESSION, INSTITUTION, "S1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "101500", "HOUSE^GREGORY"
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
        paths.append(folder / f"img{i + 1}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths, study_uid
