"""What every floor shares: errors, atomic writes, disk space, devices, the console, content keys, run folders and the command line's error contract."""
