"""Tools for the people who run the policy (admins, not programmers): change ``rules/`` and
``templates/`` and see what the change will do before it reaches a complainant.

- ``ruleset``: one complete set (rules directory + letter templates + classifier patterns),
  checked together the way ``mailbot rules check`` does and, for the daemon, kept as a private
  snapshot so that a half-saved edit on disk never leaks into a letter;
- ``reload``: the running daemon notices a change, checks the whole set, and switches to it
  between messages, or refuses it and tells the admin while it keeps the last good set;
- ``plan``: what one message *would* do (classification, route, case, letters, deadlines),
  worked out from the pipeline's own decisions without writing anything;
- ``simulate`` / ``replay``: that plan for one ``.eml`` file, or for the stored mail of the
  past under another set of rules, as a list of what would change;
- ``preview``: a letter rendered with a real case or a sample one;
- ``corrections``: staff corrections (``#reclassify``) turned into training examples.
"""
