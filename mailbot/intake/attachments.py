"""The words in an attached letter.

People often write their complaint in Word or as a PDF and send it with "Please see the attached
letter" as the whole body; solicitors' letters and review requests come the same way.  Without
the attachment's words the classifier would see one line, and staff reading the case from
Outlook would not see what was said.  So the text of PDF, Word (.docx) and plain-text
attachments is read here, with limits: a broken or hostile file gives no text, never an error,
and a huge one is not opened at all.
"""

from __future__ import annotations

import io
import logging
import re

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 15 * 1024 * 1024  # a letter is small; a bigger file is a scan, a video or an attack
MAX_PAGES = 20
MAX_CHARS = 20_000
MAX_UNPACKED_BYTES = 60 * 1024 * 1024  # a Word file's parts, unpacked (pypdf has its own such limits)

_PDF = ("application/pdf", "application/x-pdf")
_DOCX = ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",)


def attachment_text(filename: str, content_type: str, data: bytes) -> str:
    """The readable text of one attachment, or "" (unsupported, empty, too big or unreadable)."""
    if not data or len(data) > MAX_FILE_BYTES:
        return ""
    name = (filename or "").lower()
    try:
        if content_type in _PDF or name.endswith(".pdf") or data[:5] == b"%PDF-":
            text = _pdf(data)
        elif content_type in _DOCX or name.endswith(".docx"):
            text = _docx(data)
        elif content_type == "text/plain" or name.endswith(".txt"):
            text = _plain(data)
        else:
            return ""
    except Exception as exc:  # noqa: BLE001 - a broken file must never stop the mail
        log.info("no text from attachment %r: %s: %s", filename, type(exc).__name__, exc)
        return ""
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n").replace("\x00", ""))
    return re.sub(r"\n{3,}", "\n\n", text).strip()[:MAX_CHARS]


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # malformed PDFs are common and not our news
    reader = PdfReader(io.BytesIO(data), strict=False)
    if reader.is_encrypted:
        return ""
    parts = []
    for page in reader.pages[:MAX_PAGES]:
        parts.append(page.extract_text() or "")
        if sum(len(p) for p in parts) > MAX_CHARS:
            break
    return "\n".join(parts)


def _docx(data: bytes) -> str:
    import zipfile

    import docx

    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # a zip bomb is refused before it is unpacked
        if sum(info.file_size for info in archive.infolist()) > MAX_UNPACKED_BYTES:
            return ""
    document = docx.Document(io.BytesIO(data))
    lines = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            lines.append("  ".join(cell.text for cell in row.cells))
    return "\n".join(lines)


def _plain(data: bytes) -> str:
    for charset in ("utf-8", "cp1252"):
        try:
            return data.decode(charset)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")
