"""What the node's status page and `hearth status` show, beyond the agent's own status: the bandwidth history
(history.py), the page's document assembled from the agent's parts (report.py), and the optional admin
password that guards the page's changes (admin.py: a slow hash, sessions, CSRF tokens, attempts limited)."""
