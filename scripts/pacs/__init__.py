"""A PACS on this machine: Orthanc with its DICOMweb plugin (:mod:`scripts.pacs.orthanc`) and a loader that
pushes a case into it as four DICOM series of one study (:mod:`scripts.pacs.load`). docs/monailabel.md
("The hospital set-up") shows them with MONAI Label and OHIF."""
