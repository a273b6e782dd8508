"""Order management: the command side (place, cancel, amend) and the order state it keeps."""
