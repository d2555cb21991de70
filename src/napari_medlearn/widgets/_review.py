"""A reviewer's verdict on the result a dock shows: Approve, Needs edit, or Flag with a reason.

The verdict is kept in the labels layer's metadata (``review``), so it travels with the layer,
and the docks' CSV exports carry it as the cohort table does (:data:`napari_medlearn.batch.REVIEW_COLUMNS`:
``review_status``, ``review_reason``, ``hand_edited``, ``reviewer``, ``reviewed_at``).
"""

from __future__ import annotations

from typing import Any, Callable

from qtpy.QtWidgets import QHBoxLayout, QLabel, QLineEdit, QPushButton, QVBoxLayout, QWidget

from ..batch import REVIEW_STATUSES, _review_columns


def _reviewer() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (a container)
        return ""


class ReviewBar(QWidget):
    """Verdict buttons for the layer ``labels()`` returns; ``edited(layer)`` says whether the user
    painted on it."""

    def __init__(self, labels: Callable[[], Any], edited: Callable[[Any], bool], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._labels, self._edited = labels, edited
        self.reason_edit = QLineEdit()
        self.reason_edit.setPlaceholderText("reason (required to flag)")
        self.state_label = QLabel("review: not reviewed")
        self.buttons = {}
        row = QHBoxLayout()
        for status, text in (("approved", "Approve"), ("needs edit", "Needs edit"), ("flagged", "Flag")):
            button = QPushButton(text)
            button.clicked.connect(lambda _c=False, s=status: self.review(s))
            row.addWidget(button)
            self.buttons[status] = button
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.state_label)
        layout.addWidget(self.reason_edit)
        layout.addLayout(row)

    def review(self, status: str, reason: str | None = None) -> dict | None:
        """Record ``status`` on the labels layer; returns the review (None, with one notification,
        when there is nothing to review or a flag has no reason)."""
        import datetime

        from ._common import notify_error

        layer = self._labels()
        reason = (self.reason_edit.text() if reason is None else reason).strip()
        if layer is None:
            notify_error("nothing to review: run the segmentation first")
            return None
        if status not in REVIEW_STATUSES:
            notify_error(f"unknown review status {status!r}: one of {', '.join(REVIEW_STATUSES)}")
            return None
        if status == "flagged" and not reason:
            notify_error("say why it is flagged: type a reason first")
            return None
        at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        review = {"status": status, "reason": reason, "reviewer": _reviewer(), "at": at}
        layer.metadata = {**layer.metadata, "review": review}
        self.reason_edit.clear()
        self.refresh()
        return review

    def refresh(self) -> None:
        """Show the verdict of the current labels layer."""
        layer = self._labels()
        review = (layer.metadata.get("review") if layer is not None else None) or {}
        text = review.get("status", "not reviewed")
        if review.get("reason"):
            text += f" ({review['reason']})"
        self.state_label.setText(f"review: {text}")

    def columns(self) -> dict[str, Any]:
        """The review columns for an export row of the current labels layer."""
        layer = self._labels()
        review = layer.metadata.get("review") if layer is not None else None
        return _review_columns(review, hand_edited=layer is not None and self._edited(layer))
