"""A PACS on this machine: Orthanc with its DICOMweb plugin (:mod:`apps.pacs.orthanc`), a loader that pushes a
case into it as four DICOM series of one study (:mod:`apps.pacs.load`), and a headless OHIF screenshot of a
study with its DICOM SEG (:mod:`apps.pacs.ohif`). docs/monailabel.md ("The hospital set-up") shows them with
MONAI Label and OHIF."""
