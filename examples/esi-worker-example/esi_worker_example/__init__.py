"""An example esi-worker job plugin, installed and tested like any third-party one."""
