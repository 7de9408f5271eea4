"""Online video inference: tracking, panoptic fusion, writers."""
