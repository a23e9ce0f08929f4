"""A realistic mix of complaints-mailbox traffic for benchmarks (not for training or tests).

Each message is assembled from varied parts (senders, services, grievances, praise, channels,
auto-replies, newsletters, replies quoting an acknowledgement), about 1-3 KB, with unique
Message-IDs, so a backlog of any size can be made reproducibly from a seed.
"""

from __future__ import annotations

import random
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

FIRST = ["Joanne", "Daniel", "Priya", "Sian", "Marek", "Aisha", "Tom", "Grace", "Kwame", "Lily",
         "Fatima", "Owen", "Chloe", "Raj", "Niamh", "Callum", "Zofia", "Ben", "Hannah", "Yusuf"]
LAST = ["Price", "Okafor", "Shah", "Llewelyn", "Nowak", "Begum", "Hughes", "Clarke", "Mensah",
        "Evans", "Ali", "Roberts", "Walsh", "Patel", "Byrne", "Reid", "Kowalska", "Taylor", "Khan"]
SERVICES = ["the Thursday youth club", "the employment drop-in", "the apprenticeship team",
            "the befriending scheme", "the minibus service", "the young carers group",
            "the volunteer centre", "the CV workshop", "the holiday scheme", "the training course"]
GRIEVANCES = [
    "was cancelled for the third week running and nobody told us",
    "left my son waiting outside in the rain for forty minutes",
    "charged me twice and I have still not had the refund I was promised",
    "has not returned any of my calls for over a month",
    "treated me rudely in front of other people and I felt humiliated",
    "lost the paperwork I handed in, so my application was never sent",
]
PRAISE = [
    "were brilliant with my daughter and she is a different girl now",
    "helped me get my first job in three years, I cannot thank you enough",
    "went above and beyond when my mum was unwell",
    "made the whole course fun and I passed my exam",
]


def _person(rng: random.Random) -> tuple[str, str]:
    first, last = rng.choice(FIRST), rng.choice(LAST)
    return f"{first} {last}", f"{first.lower()}.{last.lower()}{rng.randint(1, 999)}@example.com"


def message(i: int, rng: random.Random, to: str = "complaints@example.org") -> bytes:
    name, addr = _person(rng)
    service = rng.choice(SERVICES)
    when = datetime(2026, 1, 5, tzinfo=timezone.utc) + timedelta(minutes=37 * i)
    msg = EmailMessage(policy=SMTP)
    kind = rng.choices(["complaint", "compliment", "auto", "newsletter", "reply", "sms"],
                       [45, 20, 10, 10, 10, 5])[0]
    headers: dict[str, str] = {}
    if kind == "complaint":
        subject = f"Complaint about {service}"
        body = (f"Hello,\n\nI want to make a complaint. {service.capitalize()} "
                f"{rng.choice(GRIEVANCES)}. This is not good enough and I would like someone to "
                f"explain what happened and what you will do about it.\n\n"
                + "I have been coming for years and never had a problem before. " * rng.randint(1, 6)
                + f"\n\nRegards,\n{name}\n")
    elif kind == "compliment":
        subject = f"Thank you to {service}"
        body = (f"Dear team,\n\nI just wanted to say thank you. The staff at {service} "
                f"{rng.choice(PRAISE)}.\n\nWith best wishes,\n{name}\n")
    elif kind == "auto":
        subject = "Automatic reply: your message"
        headers["Auto-Submitted"] = "auto-replied"
        body = f"I am out of the office until Monday with no access to email.\n\n{name}\n"
    elif kind == "newsletter":
        name, addr = "Community Bulletin", f"news{i % 7}@bulletins.example.gov.uk"
        subject = "Community bulletin: funding round and training dates"
        headers["List-Id"] = "<bulletin.example.gov.uk>"
        headers["Precedence"] = "bulk"
        body = "This month: the winter grants round is open.\n" * rng.randint(3, 12)
    elif kind == "reply":
        subject = f"RE: [CMP-2026-{rng.randint(1, 999):05d}] We have received your complaint"
        body = (f"Thanks. I also wanted to add that {service} {rng.choice(GRIEVANCES)}.\n\n"
                f"On Mon, 5 Jan 2026 at 10:00, Complaints Team <{to}> wrote:\n"
                f"> Dear {name},\n> Thank you for contacting us. We have received your complaint.\n")
    else:
        number = f"4477009{rng.randint(10000, 99999)}"
        name, addr = f"+{number}", f"{number}@sms.relay.example.net"
        subject = f"SMS from +{number}"
        headers["X-SMS-Originator"] = f"+{number}"
        body = f"why was {service} cancelled again?? not good enough\n\n--\nSent via Relay SMS-to-Email\n"
    msg["From"] = f"{name} <{addr}>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = f"<bench-{i}-{rng.randint(0, 10**9)}@example.com>"
    for key, value in headers.items():
        msg[key] = value
    msg.set_content(body)
    return msg.as_bytes()


def backlog(n: int, seed: int = 2026) -> list[bytes]:
    rng = random.Random(seed)
    return [message(i, rng) for i in range(n)]
