"""A synthetic ultrasound DICOM study written with pydicom (tests of the reports and the PACS round
trip): phantom images as one study of one patient, with the identifiers a real study carries."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PATIENT_NAME = "DOE^JANE"
PATIENT_ID = "MRN-4417-22"
BIRTH_DATE = "19610203"
ACCESSION = "ACC-99817"
INSTITUTION = "St Elsewhere Hospital"


def write_study(
    folder: Path, images: list[np.ndarray], study_uid: str | None = None
) -> tuple[list[Path], str]:
    """Write ``images`` (grey uint8) as the instances of one ultrasound series of one study; return the
    files and the Study Instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i, pixels in enumerate(images):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # ultrasound image storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            PATIENT_NAME,
            PATIENT_ID,
            BIRTH_DATE,
            "F",
        )
        ds.AccessionNumber, ds.InstitutionName, ds.StudyID = ACCESSION, INSTITUTION, "S1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = "20260101", "101500", "HOUSE^GREGORY"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, i + 1
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
        paths.append(folder / f"img{i + 1}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths, study_uid
