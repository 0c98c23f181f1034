#!/bin/sh
# How real.txt and reflection.txt were made (kept for the record; the tests
# read only the .txt files). One line per UDP datagram:
#   SOURCE <TAB> SPORT <TAB> DPORT <TAB> PAYLOAD-HEX
# The tests put each payload in frames of their own (to the media ports,
# IPv4 and IPv6, tagged and not), so only the payload and the source port
# matter.
#
# real.txt, media that must pass:
#   coturn-4.6: turnserver (coturn 4.6, --lt-cred-mech) and turnutils_uclient
#     (channels and Send indications, IPv4 and IPv6) in a network namespace,
#     captured with tshark: the datagrams to and from port 3478 (STUN
#     Binding, Allocate with its 401 challenge, Refresh, CreatePermission,
#     ChannelBind, ChannelData with coturn's RFC 5766 channel numbers).
#   openssl-dtls: openssl s_server/s_client -dtls1_2 and -dtls1 (handshake,
#     HelloVerifyRequest, ChangeCipherSpec, alerts), captured with tshark.
#   sipp-g711a, sipp-dtmf: the RTP of /usr/share/sip-tester/*.pcap (sipp's
#     pcap-play files: G.711 A-law and RFC 2833 events).
# reflection.txt, amplification answers from their real source ports (the
# datagrams from 53, 123, 161 and 162 only: a request is not a reflection):
#   tcpdump: tests/dns_udp.pcap, ntp.pcap, ntp-mode7.pcap (monlist),
#     ntp-control.pcap, ip-snmp-leftshift-unsigned.pcap of
#     github.com/the-tcpdump-group/tcpdump (commit 39b50f76).
set -eu
dump() { # SOURCE FILE [FILTER]
    tshark -r "$2" -Y "${3:-udp}" -T fields -e udp.srcport -e udp.dstport -e udp.payload |
        awk -v s="$1" -F'\t' '$3 != "" { print s "\t" $1 "\t" $2 "\t" $3 }'
}
{
    dump coturn-4.6 turn.pcapng "udp.port == 3478"
    dump openssl-dtls dtls.pcapng
    dump sipp-g711a /usr/share/sip-tester/g711a.pcap | head -n 40
    for f in /usr/share/sip-tester/dtmf_2833_*.pcap; do dump sipp-dtmf "$f"; done
} > real.txt
{
    for f in dns_udp ntp ntp-mode7 ntp-control ip-snmp-leftshift-unsigned; do
        dump "tcpdump-$f" "$f.pcap"
    done
} | awk -F"\t" '$2 == 53 || $2 == 123 || $2 == 161 || $2 == 162' > reflection.txt
