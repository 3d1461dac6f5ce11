# SPDX-License-Identifier: Apache-2.0
# A Perl workload for the malloc comparison: hashes of strings, arrays, sorting, regular
# expressions, string building. Deterministic (its own LCG); prints a digest.
# Usage: perl work.pl [scale]
use strict;
use warnings;
use Digest::MD5 qw(md5_hex);

my $scale = shift // 10;
my $seed = 1;
sub rnd { $seed = ($seed * 1103515245 + 12345) % 2147483648; return $seed; }
my $digest = Digest::MD5->new;
for my $round (1 .. $scale) {
  my %h;
  for my $i (1 .. 30000) {
    my $k = sprintf("k%x-%d", rnd() % 1048576, $i % 89);
    push @{ $h{$k} }, "v" x (1 + rnd() % 40);
  }
  my @keys = sort { length($h{$a}[0]) <=> length($h{$b}[0]) or $a cmp $b } keys %h;
  my $text = join(",", map { "$_=" . scalar(@{ $h{$_} }) } @keys);
  my @parts = split /,/, $text;
  my %count;
  for (@parts) { /^k([0-9a-f]{2})/ and $count{$1}++ }
  $digest->add(join(";", map { "$_:$count{$_}" } sort keys %count));
}
print $digest->hexdigest, "\n";
