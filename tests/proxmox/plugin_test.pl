#!/usr/bin/perl
# Calls PVE::Storage::Custom::QBDPlugin's functions as Proxmox VE would, against a real qbd-master
# (its REST API at ARGV[0]). Proxmox does not run here: its base classes are the stand-ins in
# tests/proxmox/stub (PVE::Storage, PVE::Storage::Plugin); the plugin and the daemon are real.
# Prints PASS:/FAIL: lines; ARGV[1] is "attach" when the host can attach NBD devices (in the VM,
# tests/vm/guest/proxmox_plugin.sh): then activate/deactivate attach and detach /dev/qbd/<volume>,
# data is written through it, it is grown while attached, and free_image deletes it attached.
# Without "attach" (tests/integration/test_proxmox_plugin.sh, a host without the nbd module),
# activate_volume must fail with the daemon's answer.
use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/stub", "$FindBin::Bin/../../proxmox";

BEGIN {
    # The plugin is installed as PVE/Storage/Custom/QBDPlugin.pm; here it is loaded from proxmox/.
    require "$FindBin::Bin/../../proxmox/QBDPlugin.pm";
}

my ($api, $mode) = @ARGV;
die "usage: plugin_test.pl API_URL [attach]\n" if !$api;
my $P = 'PVE::Storage::Custom::QBDPlugin';
my $scfg = { 'qbd-api' => $api, type => 'qbd', content => { images => 1 } };
my $storeid = 'qbd';
my $failed = 0;

sub pass { print "PASS: $_[0]\n"; }
sub fail { print "FAIL: $_[0]: $_[1]\n"; $failed++; }
sub ok { my ($name, $cond, $why) = @_; $cond ? pass($name) : fail($name, $why // 'false'); }
sub dies_like {
    my ($name, $code, $re) = @_;
    eval { $code->(); };
    my $err = $@ // '';
    $err =~ s/\n/ /g;
    ($err =~ $re) ? pass($name) : fail($name, "died with '$err'");
}

sub all_attachments {
    return @{ PVE::Storage::Custom::QBDPlugin::qbd_call($scfg, 'GET', '/v1/attachments')->{attachments} };
}
sub attachment { my ($v) = @_; my @a = grep { $_->{volume} eq $v } all_attachments(); return $a[0]; }
# The size of a block device: where a seek to its end lands.
sub device_size {
    open(my $fh, '<', $_[0]) or return -1;
    my $end = sysseek($fh, 0, 2);
    close($fh);
    return $end // -1;
}
sub write_at {
    my ($dev, $off, $data) = @_;
    open(my $fh, '+<', $dev) or return 0;
    binmode($fh);
    my $ok = sysseek($fh, $off, 0) && syswrite($fh, $data) == length($data);
    require IO::Handle;
    $ok &&= $fh->sync;  # fsync: through the kernel's cache to the daemon
    return close($fh) && $ok;
}
sub read_at {
    my ($dev, $off, $len) = @_;
    open(my $fh, '<', $dev) or return '';
    binmode($fh);
    my $buf = '';
    sysseek($fh, $off, 0) or return '';
    while (length($buf) < $len) {
        my $n = sysread($fh, $buf, $len - length($buf), length($buf));
        last if !$n;
    }
    close($fh);
    return $buf;
}

ok("type is qbd and the storage is declared shared", $P->type() eq 'qbd'
   && grep({ $_ eq 'qbd' } @PVE::Storage::Plugin::SHARED_STORAGE));
ok("api() answers a version PVE accepts", $P->api() == 11);
my @p = $P->parse_volname('vm-100-disk-0');
ok("parse_volname splits vm-100-disk-0", "@p[0..2] $p[6]" eq 'images vm-100-disk-0 100 raw', join(" ", map { $_ // "undef" } @p));
dies_like("parse_volname refuses a foreign name", sub { $P->parse_volname('base-1-disk-0') }, qr/unable to parse/);
ok("path is /dev/qbd/<volume>", scalar($P->path($scfg, 'vm-100-disk-0', $storeid)) eq '/dev/qbd/vm-100-disk-0');
ok("activate_storage reaches the daemon", eval { $P->activate_storage($storeid, $scfg, {}) });

my $n0 = eval { $P->alloc_image($storeid, $scfg, 100, 'raw', undef, 64 * 1024) };
ok("alloc_image names the first disk vm-100-disk-0", ($n0 // '') eq 'vm-100-disk-0', $@);
my $n1 = eval { $P->alloc_image($storeid, $scfg, 100, 'raw', '', 32 * 1024) };
ok("alloc_image names the next one vm-100-disk-1", ($n1 // '') eq 'vm-100-disk-1', $@);
my $n2 = eval { $P->alloc_image($storeid, $scfg, 101, 'raw', 'vm-101-disk-0', 16) };
ok("alloc_image takes a given name, at least 4 MiB", ($n2 // '') eq 'vm-101-disk-0', $@);
dies_like("alloc_image refuses an existing name", sub { $P->alloc_image($storeid, $scfg, 100, 'raw', 'vm-100-disk-0', 1024) }, qr/already exists/);
dies_like("alloc_image refuses qcow2", sub { $P->alloc_image($storeid, $scfg, 100, 'qcow2', undef, 1024) }, qr/unsupported format/);
dies_like("alloc_image refuses another VM's name", sub { $P->alloc_image($storeid, $scfg, 100, 'raw', 'vm-7-disk-0', 1024) }, qr/does not belong/);

my $all = $P->list_images($storeid, $scfg, undef, undef, {});
my %size = map { $_->{volid} => $_->{size} } @$all;
ok("list_images lists the three disks with their sizes",
   scalar(@$all) == 3 && $size{'qbd:vm-100-disk-0'} == 64 << 20 && $size{'qbd:vm-100-disk-1'} == 32 << 20
   && $size{'qbd:vm-101-disk-0'} == 4 << 20, join(' ', map { "$_=$size{$_}" } sort keys %size));
my $mine = $P->list_images($storeid, $scfg, 101, undef, {});
ok("list_images for VM 101 lists its disk only", scalar(@$mine) == 1 && $mine->[0]->{volid} eq 'qbd:vm-101-disk-0'
   && $mine->[0]->{vmid} == 101 && $mine->[0]->{format} eq 'raw');

ok("volume_resize grows vm-100-disk-1 to 48 MiB", eval { $P->volume_resize($scfg, $storeid, 'vm-100-disk-1', 48 << 20, 0) }, $@);
my $sz = $P->volume_size_info($scfg, $storeid, 'vm-100-disk-1');
ok("volume_size_info says 48 MiB", $sz == 48 << 20, $sz);
dies_like("volume_resize never shrinks", sub { $P->volume_resize($scfg, $storeid, 'vm-100-disk-1', 8 << 20, 0) }, qr/HTTP 400/);

my ($total, $avail, $used, $active) = $P->status($storeid, $scfg, {});
ok("status: active, capacity from the backends, used = provisioned",
   $active == 1 && $avail > 0 && $used == (64 + 48 + 4) << 20 && $total == $avail + $used, "$total $avail $used $active");
ok("volume_has_feature: copy yes, snapshot no",
   $P->volume_has_feature($scfg, 'copy', $storeid, 'vm-100-disk-0') && !$P->volume_has_feature($scfg, 'snapshot', $storeid, 'vm-100-disk-0'));
dies_like("snapshots are refused with a message", sub { $P->volume_snapshot($scfg, $storeid, 'vm-100-disk-0', 's1') }, qr/not supported/);

my $attach = ($mode // '') eq 'attach';
my $dev0 = '/dev/qbd/vm-100-disk-0';
if ($attach) {
    ok("activate_volume attaches vm-100-disk-0", eval { $P->activate_volume($storeid, $scfg, 'vm-100-disk-0') }, $@);
    my $a = attachment('vm-100-disk-0');
    ok("GET /v1/attachments lists it with its device and link",
       $a && ($a->{device} // '') =~ m{^/dev/nbd\d+$} && ($a->{link} // '') eq $dev0 && $a->{connected},
       JSON::PP->new->canonical->encode($a // {}));
    ok("$dev0 is a block device of the volume's size (64 MiB)", -b $dev0 && device_size($dev0) == 64 << 20,
       (-b $dev0 ? 'size ' . device_size($dev0) : 'not a block device'));
    ok("activate_volume again is a no-op (same device)",
       eval { $P->activate_volume($storeid, $scfg, 'vm-100-disk-0') } && attachment('vm-100-disk-0')
       && attachment('vm-100-disk-0')->{device} eq ($a->{device} // '') && all_attachments() == 1, $@);
    my $pattern = join('', map { chr(($_ * 7 + 3) % 251) } 0 .. 65535) x 16;  # 1 MiB
    ok("writing 1 MiB at 8 MiB through the device", write_at($dev0, 8 << 20, $pattern), $!);
    ok("reading it back through the device", read_at($dev0, 8 << 20, length($pattern)) eq $pattern);

    # Grown while attached: the volume and its kernel device grow together (QEMU's block_resize
    # and file systems see the new size at once).
    my $grown = eval { $P->volume_resize($scfg, $storeid, 'vm-100-disk-0', 96 << 20, 1) };
    my $err = $@ // '';
    my $vsz = $P->volume_size_info($scfg, $storeid, 'vm-100-disk-0');
    ok("volume_resize while attached grows the volume and $dev0 to 96 MiB",
       $grown && $vsz == 96 << 20 && device_size($dev0) == 96 << 20,
       "volume $vsz, device " . (device_size($dev0) // 'none') . ", error '$err'");

    ok("deactivate_volume detaches it", eval { $P->deactivate_volume($storeid, $scfg, 'vm-100-disk-0') }
       && !-e $dev0 && !attachment('vm-100-disk-0'), $@);
    ok("deactivate_volume again is a no-op", eval { $P->deactivate_volume($storeid, $scfg, 'vm-100-disk-0') }, $@);
    ok("activate_volume attaches it again", eval { $P->activate_volume($storeid, $scfg, 'vm-100-disk-0') } && -b $dev0, $@);
    ok("the data written before the detach reads back from the daemon",
       read_at($dev0, 8 << 20, length($pattern)) eq $pattern);
    # Left attached: free_image below must detach it first.
} else {
    # No kernel nbd module on this host: the daemon's answer, as the plugin relays it.
    dies_like("activate_volume on a host without NBD devices fails with the daemon's answer",
              sub { $P->activate_volume($storeid, $scfg, 'vm-100-disk-0') },
              qr{^qbd: POST /v1/volumes/vm-100-disk-0/attach: HTTP 400: no /dev/nbdN: the kernel's nbd module is not loaded \(modprobe nbd\) $});
    ok("deactivate_volume of a volume not attached is a no-op",
       eval { $P->deactivate_volume($storeid, $scfg, 'vm-100-disk-0') }, $@);
}

for my $v ('vm-100-disk-0', 'vm-100-disk-1', 'vm-101-disk-0') {
    my $att = $attach && $v eq 'vm-100-disk-0' ? ' (attached: detached first)' : '';
    ok("free_image deletes $v$att", eval { $P->free_image($storeid, $scfg, $v); 1 }, $@);
}
ok("the deleted volumes are gone from the daemon",
   !PVE::Storage::Custom::QBDPlugin::qbd_call($scfg, 'GET', '/v1/volumes/vm-100-disk-0', undef, 404)
   && $PVE::Storage::Custom::QBDPlugin::QBD_STATUS == 404 && !-e $dev0 && all_attachments() == 0);
ok("list_images is empty after", scalar(@{ $P->list_images($storeid, $scfg, undef, undef, {}) }) == 0);
dies_like("free_image of a missing volume fails with 404", sub { $P->free_image($storeid, $scfg, 'vm-100-disk-0') }, qr/HTTP 404/);
my $down = { %$scfg, 'qbd-api' => 'http://127.0.0.1:9' };
ok("status of an unreachable daemon is undef (inactive)", !defined(scalar($P->status($storeid, $down, {}))));
exit($failed ? 1 : 0);
