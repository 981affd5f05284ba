package PVE::Storage::Custom::QBDPlugin;

# A Proxmox VE storage plugin for QuorumBD: every VM disk is a qbd volume of its own
# (vm-<vmid>-disk-<n>), created, grown, attached and deleted through the REST API of the
# qbd-master on this node (http://127.0.0.1:10810 by default). A disk is attached as a kernel NBD
# device, /dev/qbd/<volume>, on the node that runs the VM; the storage is shared (every node's
# qbd-master reaches the same backends), so a migration detaches the disk on one node and attaches
# it on the other, and the volume's lease moves with it.
#
# Live migration: Proxmox starts the VM on the target node (with PVE_MIGRATED_FROM set) while it
# still runs on the source, so the disk is attached on both for a while. The target attaches it
# with "migration": its qbd-master forwards the device's requests to the source node's qbd-master
# until the source detaches it after the switch-over; then it takes the volume over. One master
# writes the volume at any time. For this, every node's qbd.conf listens for NBD on an address of
# the cluster network (listen = 0.0.0.0:10809 or the node's address), not only on loopback.
#
# /etc/pve/storage.cfg:
#   qbd: qbd
#       content images
#       shared 1
#       qbd-replicas 3
#
# Installed by `make install` as /usr/share/perl5/PVE/Storage/Custom/QBDPlugin.pm.

use strict;
use warnings;

use HTTP::Tiny;
use JSON::PP;

use PVE::Storage::Plugin;
use base qw(PVE::Storage::Plugin);

# qbd volumes hold their data on backends every node reaches: declare the type shared.
push @PVE::Storage::Plugin::SHARED_STORAGE, 'qbd'
  if !grep { $_ eq 'qbd' } @PVE::Storage::Plugin::SHARED_STORAGE;

my $DEFAULT_API = 'http://127.0.0.1:10810';
my $DEFAULT_TOKEN_FILE = '/etc/qbd/api.token';
my $MIN_SIZE_KIB = 4 * 1024;  # the smallest volume worth a device (one 4 KiB block would do)

sub api {
    # Tested with storage API versions 10 to 11 (PVE 7.1 to 8.4); a newer PVE accepts an older
    # version within its APIAGE.
    my $tested = 11;
    my $apiver = eval { PVE::Storage::APIVER() } // $tested;
    my $apiage = eval { PVE::Storage::APIAGE() } // 0;
    return $apiver if $apiver >= 10 && $apiver <= $tested;
    return $tested if $apiver - $apiage <= $tested;
    return $tested;
}

sub type { return 'qbd'; }

sub plugindata {
    return { content => [ { images => 1 }, { images => 1 } ] };
}

sub properties {
    return {
        'qbd-api' => {
            description => "The REST API of this node's qbd-master.",
            type => 'string',
            default => $DEFAULT_API,
        },
        'qbd-token-file' => {
            description => "A file holding the qbd-master API's bearer token (api_token_file).",
            type => 'string',
        },
        'qbd-replicas' => {
            description => "Replicas of each new volume (default: every part of qbd.conf).",
            type => 'integer',
            minimum => 1,
            maximum => 26,
        },
    };
}

sub options {
    return {
        'qbd-api' => { optional => 1 },
        'qbd-token-file' => { optional => 1 },
        'qbd-replicas' => { optional => 1 },
        content => { optional => 1 },
        nodes => { optional => 1 },
        disable => { optional => 1 },
        shared => { optional => 1 },
    };
}

# ---- the REST API

# qbd_call($scfg, METHOD, PATH, BODY, [TOLERATED...]): the decoded JSON answer; dies with the
# daemon's message ({"error": ...}) and its HTTP status otherwise. A status listed in TOLERATED
# (404, 409) is not an error: the answer is then undef, and the status is in $QBD_STATUS.
our $QBD_STATUS;
sub qbd_call {
    my ($scfg, $method, $path, $body, @tolerated) = @_;
    my $base = $scfg->{'qbd-api'} // $DEFAULT_API;
    my %headers = ('Accept' => 'application/json');
    my $token_file = $scfg->{'qbd-token-file'};
    $token_file = $DEFAULT_TOKEN_FILE if !defined($token_file) && -r $DEFAULT_TOKEN_FILE;
    if (defined($token_file)) {
        open(my $fh, '<', $token_file) or die "qbd: cannot read $token_file: $!\n";
        my $token = <$fh> // '';
        close($fh);
        $token =~ s/\s+$//;
        $headers{Authorization} = "Bearer $token";
    }
    my %opts = (headers => \%headers);
    if (defined($body)) {
        $headers{'Content-Type'} = 'application/json';
        $opts{content} = encode_json($body);
    } elsif ($method ne 'GET') {
        $opts{content} = '';
    }
    my $http = HTTP::Tiny->new(timeout => 600);
    my $res = $http->request($method, "$base$path", \%opts);
    $QBD_STATUS = $res->{status};
    my $json = eval { decode_json($res->{content} // '') };
    if (!$res->{success}) {
        return undef if grep { $_ == $res->{status} } @tolerated;
        # HTTP::Tiny's own failures (connection refused, timeout) are status 599.
        my $msg = (ref($json) eq 'HASH' && defined($json->{error}))
          ? $json->{error} : ($res->{content} // $res->{reason});
        $msg =~ s/\s+$//;
        die "qbd: $method $path: HTTP $res->{status}: $msg\n";
    }
    die "qbd: $method $path: the answer is not JSON\n" if !defined($json);
    return $json;
}

sub qbd_volumes {
    my ($scfg) = @_;
    my $list = qbd_call($scfg, 'GET', '/v1/volumes');
    return { map { $_->{name} => $_ } @{ $list->{volumes} // [] } };
}

# ---- names and paths

sub parse_volname {
    my ($class, $volname) = @_;
    if ($volname =~ m/^(vm-(\d+)-(?:disk-\d+|cloudinit|state-[A-Za-z0-9_.-]+))$/) {
        return ('images', $1, $2, undef, undef, undef, 'raw');
    }
    die "unable to parse qbd volume name '$volname'\n";
}

# The stable name qbd makes for an attached volume.
sub qbd_device_path {
    my ($volname) = @_;
    return "/dev/qbd/$volname";
}

sub filesystem_path {
    my ($class, $scfg, $volname, $snapname) = @_;
    die "qbd: snapshots are not supported\n" if defined($snapname);
    my ($vtype, $name, $vmid) = $class->parse_volname($volname);
    my $path = qbd_device_path($name);
    return wantarray ? ($path, $vmid, $vtype) : $path;
}

sub path {
    my ($class, $scfg, $volname, $storeid, $snapname) = @_;
    return $class->filesystem_path($scfg, $volname, $snapname);
}

# ---- volumes

sub alloc_image {
    my ($class, $storeid, $scfg, $vmid, $fmt, $name, $size_kib) = @_;
    die "qbd: unsupported format '$fmt' (raw only)\n" if $fmt ne 'raw';
    my $existing = qbd_volumes($scfg);
    if (!$name) {
        for (my $n = 0; $n < 1000; $n++) {
            my $candidate = "vm-$vmid-disk-$n";
            if (!exists($existing->{$candidate})) {
                $name = $candidate;
                last;
            }
        }
        die "qbd: no free disk name for VM $vmid\n" if !$name;
    }
    my ($vtype, $volname, $owner) = $class->parse_volname($name);
    die "qbd: volume name '$name' does not belong to VM $vmid\n" if $owner != $vmid;
    die "qbd: volume '$name' already exists\n" if exists($existing->{$name});
    $size_kib = $MIN_SIZE_KIB if $size_kib < $MIN_SIZE_KIB;
    my $body = { name => $name, size => $size_kib * 1024 };
    $body->{replicas} = int($scfg->{'qbd-replicas'}) if defined($scfg->{'qbd-replicas'});
    qbd_call($scfg, 'POST', '/v1/volumes', $body);
    return $name;
}

sub free_image {
    my ($class, $storeid, $scfg, $volname, $isBase) = @_;
    my ($vtype, $name) = $class->parse_volname($volname);
    # The daemon refuses to delete an attached volume (409): detach it first. A device in use
    # stops here, with the daemon's message.
    qbd_detach($scfg, $name);
    # The kernel closes its connections as it detaches; until the daemon has seen them end, it
    # refuses the delete with 409 (connected clients). Those were ours: wait for them.
    my $tries = 0;
    while (!qbd_call($scfg, 'DELETE', "/v1/volumes/$name", undef, $tries < 50 ? (409) : ())) {
        $tries++;
        select(undef, undef, undef, 0.1);
    }
    return undef;
}

sub list_images {
    my ($class, $storeid, $scfg, $vmid, $vollist, $cache) = @_;
    my $volumes = $cache->{'qbd:volumes'} //= qbd_volumes($scfg);
    my $res = [];
    for my $name (sort keys %$volumes) {
        my ($vtype, $volname, $owner) = eval { $class->parse_volname($name) };
        next if !defined($owner);
        my $volid = "$storeid:$name";
        next if defined($vmid) && $owner != $vmid;
        next if $vollist && !grep { $_ eq $volid } @$vollist;
        push @$res, {
            volid => $volid, format => 'raw', size => $volumes->{$name}->{size},
            vmid => $owner,
        };
    }
    return $res;
}

# Capacity from the backends: what each new byte of a replicated volume can still take is the
# free space of the fullest part; used is what the volumes provision.
sub status {
    my ($class, $storeid, $scfg, $cache) = @_;
    my ($backends, $volumes) = eval {
        (qbd_call($scfg, 'GET', '/v1/backends'), qbd_volumes($scfg));
    };
    return undef if $@;  # the daemon does not answer: the storage is inactive
    my $avail;
    for my $b (@{ $backends->{backends} // [] }) {
        next if !defined($b->{part});
        return (0, 0, 0, 0) if !$b->{reachable} || !defined($b->{free_bytes});
        $avail = $b->{free_bytes} if !defined($avail) || $b->{free_bytes} < $avail;
    }
    $avail //= 0;
    my $used = 0;
    $used += ($_->{size} // 0) for values %$volumes;
    return ($avail + $used, $avail, $used, 1);
}

sub activate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    qbd_call($scfg, 'GET', '/v1/daemon');
    return 1;
}

sub deactivate_storage {
    my ($class, $storeid, $scfg, $cache) = @_;
    return 1;
}

# The attachment of `volname` on this node ({"volume", "device", "index", "connections", "live",
# "connected", "backend", "link"}), or undef.
sub qbd_attachment {
    my ($scfg, $volname) = @_;
    my $list = qbd_call($scfg, 'GET', '/v1/attachments');
    for my $a (@{ $list->{attachments} // [] }) {
        return $a if ($a->{volume} // '') eq $volname;
    }
    return undef;
}

# Attaches `volname` here; one attached already is left as it is. The daemon answers 409 both
# for "already attached" and for a disk another node's qbd-master did not hand over (still in use
# there): only the first is fine. With `migration` (the target of a live migration) the disk in
# use on the source node is forwarded there until the source detaches it.
sub qbd_attach {
    my ($scfg, $volname, $migration) = @_;
    return if qbd_attachment($scfg, $volname);
    eval {
        qbd_call($scfg, 'POST', "/v1/volumes/$volname/attach",
                 $migration ? { migration => JSON::PP::true } : undef);
    };
    my $err = $@;
    return if !$err;
    return if $err =~ m{HTTP 409: volume \S+ is already attached} && qbd_attachment($scfg, $volname);
    die $err;
}

# Detaches `volname` here; one not attached is fine (the daemon answers 404). Dies when the device
# is in use (409: mounted, or held by device-mapper).
sub qbd_detach {
    my ($scfg, $volname) = @_;
    qbd_call($scfg, 'POST', "/v1/volumes/$volname/detach", undef, 404);
}

sub activate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache, $hints) = @_;
    die "qbd: snapshots are not supported\n" if $snapname;
    my ($vtype, $name) = $class->parse_volname($volname);
    # qemu-server sets PVE_MIGRATED_FROM while it starts the VM that a live migration moves here.
    qbd_attach($scfg, $name, $ENV{PVE_MIGRATED_FROM} ? 1 : 0);
    return 1;
}

sub deactivate_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $cache) = @_;
    die "qbd: snapshots are not supported\n" if $snapname;
    my ($vtype, $name) = $class->parse_volname($volname);
    qbd_detach($scfg, $name);
    return 1;
}

sub map_volume {
    my ($class, $storeid, $scfg, $volname, $snapname, $hints) = @_;
    $class->activate_volume($storeid, $scfg, $volname, $snapname);
    return $class->filesystem_path($scfg, $volname, $snapname);
}

sub unmap_volume {
    my ($class, $storeid, $scfg, $volname, $snapname) = @_;
    return $class->deactivate_volume($storeid, $scfg, $volname, $snapname);
}

# The size in bytes of the kernel device `dev` (/dev/nbdN), from sysfs; undef if it has none.
sub qbd_device_size {
    my ($dev) = @_;
    my ($n) = ($dev // '') =~ m{^/dev/(nbd\d+)$} or return undef;
    open(my $fh, '<', "/sys/block/$n/size") or return undef;
    my $sectors = <$fh>;
    close($fh);
    return defined($sectors) ? int($sectors) * 512 : undef;
}

sub volume_resize {
    my ($class, $scfg, $storeid, $volname, $size, $running, $snapname) = @_;
    die "qbd: snapshots are not supported\n" if defined($snapname);
    my ($vtype, $name) = $class->parse_volname($volname);
    qbd_call($scfg, 'PATCH', "/v1/volumes/$name", { size => int($size) });
    # An attached volume: its kernel device must grow too before QEMU (block_resize) or a file
    # system can use the new size. Wait for it briefly; say so if it does not.
    my $a = qbd_attachment($scfg, $name) or return 1;
    my $dev_size;
    for (my $i = 0; $i < 20; $i++) {
        $dev_size = qbd_device_size($a->{device});
        return 1 if !defined($dev_size) || $dev_size >= $size;
        select(undef, undef, undef, 0.1);
    }
    die "qbd: volume $name grew to $size bytes, but its device $a->{device} still has $dev_size "
      . "(see qbd-master's log); detach and attach it again (stop the VM, or migrate it)\n";
}

sub volume_size_info {
    my ($class, $scfg, $storeid, $volname, $timeout) = @_;
    my ($vtype, $name) = $class->parse_volname($volname);
    my $v = qbd_call($scfg, 'GET', "/v1/volumes/$name");
    return wantarray ? ($v->{size}, 'raw', $v->{size}, undef) : $v->{size};
}

sub volume_has_feature {
    my ($class, $scfg, $feature, $storeid, $volname, $snapname, $running) = @_;
    # A full copy (qemu-img through the devices) works; snapshots, clones and templates do not.
    return 1 if $feature eq 'copy' && !$snapname;
    return undef;
}

sub create_base { die "qbd: templates are not supported\n"; }
sub clone_image { die "qbd: linked clones are not supported\n"; }
sub volume_snapshot { die "qbd: snapshots are not supported\n"; }
sub volume_snapshot_rollback { die "qbd: snapshots are not supported\n"; }
sub volume_snapshot_delete { die "qbd: snapshots are not supported\n"; }
sub rename_volume { die "qbd: renaming a volume is not supported\n"; }

1;
