"""Architecture knowledge as data: key+shape lists in data/, one file per component."""
