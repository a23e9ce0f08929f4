"""Staff work a case from their own mail program: the case tag in the subject, commands as
hashtags, and nothing obeyed unless the sender is proved to be staff.

- ``threads``: which case a message belongs to (tag in the subject, then the thread headers,
  then a reference in the text);
- ``commands``: reading ``#reply``, ``#outcome``, ``#extend 10 working days: ...`` and the
  rest out of a subject and a body (quoted history and signatures cut off);
- ``auth``: whether the sender is on the staff list *and* the message is authenticated
  (Authentication-Results from a trusted server, or Exchange's internal-organisation marks);
- ``actions``: carrying the commands out through ``mailbot.cases.workflow``, answering staff,
  and refusing (and reporting) anything forged.

See README "Working a case from Outlook".
"""

from mailbot.staffmail.actions import StaffResult, assignee_address, handle

__all__ = ["StaffResult", "assignee_address", "handle"]
