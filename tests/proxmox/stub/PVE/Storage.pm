package PVE::Storage;

# A stand-in for Proxmox VE's PVE::Storage, for tests/proxmox/plugin_test.pl only: Proxmox does not
# run on the machines the tests run on. It gives what QBDPlugin reads of it: the storage API version.

use strict;
use warnings;

use constant APIVER => 11;
use constant APIAGE => 2;

1;
