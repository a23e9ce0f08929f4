"""A complaint written as an attached letter ("Please see the attached") is read: the classifier
sees the letter's words, staff see them in their notification, and a broken or hostile file
changes nothing but its own text."""

from __future__ import annotations

import io
import mailbox
from email.message import EmailMessage
from email.policy import SMTP

import pytest
from sqlmodel import select

from mailbot.app import App
from mailbot.cases.models import Case
from mailbot.daemon import Daemon
from mailbot.intake.attachments import MAX_FILE_BYTES, attachment_text
from mailbot.intake.parse import parse
from tests.mailkit import write_config

LETTER = ("Dear Sir or Madam,\n\nI wish to make a formal complaint about the Saturday youth club. "
          "On 3 October my daughter, who is 12, was left on her own outside the locked building for an hour "
          "after the session ended, in the dark, and nobody answered the phone.\n\n"
          "Unless I receive a proper explanation within 14 days I will be instructing a solicitor.\n\n"
          "Yours faithfully,\nAnn Parker")


def _pdf(text: str) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    out = io.BytesIO()
    page = canvas.Canvas(out, pagesize=A4)
    y = 800
    for paragraph in text.split("\n"):
        for start in range(0, max(len(paragraph), 1), 90):
            page.drawString(50, y, paragraph[start:start + 90])
            y -= 16
    page.save()
    return out.getvalue()


def _docx(text: str) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in text.split("\n\n"):
        document.add_paragraph(paragraph)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def _covering_note(data: bytes, filename: str, maintype: str, subtype: str, body: str = "Please see my attached letter.\n\nAnn") -> bytes:
    msg = EmailMessage(policy=SMTP)
    msg["From"], msg["To"], msg["Subject"] = "Ann Parker <ann.parker@example.com>", "complaints@example.org", "Letter"
    msg["Message-ID"] = f"<{filename}@example.com>"
    msg.set_content(body)
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()


@pytest.mark.parametrize("make, filename, maintype, subtype", [
    (_pdf, "complaint.pdf", "application", "pdf"),
    (_docx, "complaint.docx", "application", "vnd.openxmlformats-officedocument.wordprocessingml.document"),
    (lambda text: text.encode("cp1252"), "complaint.txt", "text", "plain"),
])
def test_the_words_of_an_attached_letter_are_read(make, filename, maintype, subtype):
    msg = parse(_covering_note(make(LETTER), filename, maintype, subtype))
    assert "left on her own outside the locked building" in " ".join(msg.attachment_text.split())
    assert msg.attachment_text.startswith(f"[{filename}]")


@pytest.mark.parametrize("data", [
    b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF",  # no pages
    b"%PDF-1.7\n" + b"\xff" * 5000,  # garbage after a PDF header
    b"PK\x03\x04 not really a zip",  # a broken .docx
])
def test_a_broken_attachment_gives_no_text_and_no_error(data):
    assert attachment_text("broken.pdf" if data.startswith(b"%PDF") else "broken.docx", "application/octet-stream",
                           data) == ""


def test_a_word_zip_bomb_is_not_unpacked():
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", b"<w:document>" + b" " * (80 * 1024 * 1024) + b"</w:document>")
    assert len(out.getvalue()) < MAX_FILE_BYTES
    assert attachment_text("bomb.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                           out.getvalue()) == ""


def test_a_huge_attachment_is_not_opened():
    assert attachment_text("scan.pdf", "application/pdf", b"%PDF-1.4\n" + b"0" * (MAX_FILE_BYTES + 1)) == ""


def test_a_complaint_in_an_attached_pdf_is_handled_as_one(tmp_path, smtp_server, sqlite_url):
    """The covering note says only "please see my attached letter"; the letter carries the
    complaint, a child left alone (safeguarding) and a solicitor (legal)."""
    app = App.load(write_config(tmp_path, db_url=sqlite_url, smtp=smtp_server, staff=["team@example.org"]))
    inbox = mailbox.Maildir(tmp_path / "inbox", create=True)
    inbox.add(_covering_note(_pdf(LETTER), "complaint.pdf", "application", "pdf"))
    inbox.close()
    daemon = Daemon(app)
    report = daemon.run_once()
    daemon.close()
    assert [o.action for o in report.outcomes] == ["case_opened"]
    with app.db.session() as s:
        case = s.exec(select(Case)).one()
        assert case.kind == "complaint"
        assert {"safeguarding", "legal"} <= set(case.flag_list)
    to_staff = [m for m in smtp_server.wait_for(2) if "team@example.org" in m.rcpt_tos]
    assert to_staff
    text = " ".join(to_staff[0].message.get_body(("plain",)).get_content().split())
    assert "The words of their attachments" in text and "instructing a solicitor" in text
    app.close()


def test_a_long_message_is_read_for_itself_not_for_its_attachment(tmp_path):
    """A person who writes their complaint in the mail and attaches, say, a CV or an invoice is
    classified on what they wrote; the attachment is for staff to see."""
    from mailbot.classify import Classifier
    from mailbot.policy.rules import load_rules
    from tests.mailkit import REPO

    body = ("Thank you so much to everyone at the employment hub. The workshops on interviews and the mock "
            "interview with Priya gave me the confidence I had lost after two years out of work, and last week "
            "I was offered the job. I have attached the letter from my new employer because I thought the team "
            "would like to see it. Please pass on my thanks to Priya and to the volunteers on reception.")
    invoice = "INVOICE 2231\nLegal services: solicitor's fees for the claim against Brown Ltd, court fee, total 1,240.00"
    msg = parse(_covering_note(_pdf(invoice), "letter.pdf", "application", "pdf", body=body))
    result = Classifier(load_rules(REPO / "rules")).classify(msg)
    assert result.label == "compliment" and "legal" not in result.flags
