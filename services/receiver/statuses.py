"""DIMSE status codes the receiver answers with (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

SUCCESS = 0x0000
"""Success: C-ECHO answered; C-STORE instance durably stored (or ignored by configuration)."""

OUT_OF_RESOURCES = 0xA700
"""Refused: Out of Resources (PS3.4 B.2.3): the object store did not take the instance."""

DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
"""Error: Data Set does not match SOP Class (PS3.4 B.2.3): the data set's SOP Class or
SOP Instance UID contradicts the C-STORE request's Affected SOP Class / Instance UID."""

CANNOT_UNDERSTAND = 0xC000
"""Error: Cannot understand (PS3.4 B.2.3): the data set cannot be read."""

INVALID_SOP_INSTANCE = 0x0117
"""Failure: Invalid SOP Instance (PS3.7 C, allowed for C-STORE by PS3.7 9.1.1.1.9): the
Affected SOP Instance UID breaks the UID construction rules, so it cannot name an object."""

DUPLICATE_SOP_INSTANCE = 0x0111
"""Failure: Duplicate SOP Instance (PS3.7 C): the SOP Instance UID was already received for
this job with different content, and the AE title's ``duplicates`` policy is ``reject``."""

PROCESSING_FAILURE = 0x0110
"""Failure: Processing failure (PS3.7 C): an unexpected error in the receiver."""

NOT_AUTHORIZED = 0x0124
"""Refused: Not authorized (PS3.7 C): the called AE title has no pipeline (any more), so
an instance sent to it would belong to no job."""
