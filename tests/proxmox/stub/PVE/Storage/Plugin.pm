package PVE::Storage::Plugin;

# A stand-in for Proxmox VE's PVE::Storage::Plugin base class, for tests/proxmox/plugin_test.pl
# only (Proxmox does not run here). It holds what a storage plugin inherits and QBDPlugin uses: the
# list of shared storage types. The plugin's own methods, which the harness calls, are the real ones.

use strict;
use warnings;

our @SHARED_STORAGE = ('iscsi', 'nfs', 'cifs', 'rbd', 'cephfs', 'iscsidirect', 'glusterfs', 'zfs', 'drbd', 'pbs');

1;
