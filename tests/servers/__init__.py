"""Real servers on loopback for mailbot's tests.

mailbot talks to IMAP, SMTP and PostgreSQL; mocks of those protocols drift
from what real servers do (hierarchy separators, refusal codes, connection
drops), so the tests start the real thing: Dovecot for IMAP, aiosmtpd for
SMTP, and a throwaway database on the local PostgreSQL.
"""

from tests.servers.dovecot import DovecotServer
from tests.servers.postgres import throwaway_database
from tests.servers.smtp import CapturedMessage, SmtpCapture

__all__ = ["CapturedMessage", "DovecotServer", "SmtpCapture", "throwaway_database"]
