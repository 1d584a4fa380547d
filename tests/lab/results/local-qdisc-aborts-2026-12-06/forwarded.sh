set -u
A=tbfy-a; R=tbfy-r; B=tbfy-b
cleanup(){ for n in $A $R $B; do ip netns del $n 2>/dev/null; done; }
trap cleanup EXIT
cleanup
for n in $A $R $B; do ip netns add $n; ip -n $n link set lo up; done
ip link add va netns $A type veth peer name ra netns $R
ip link add rb netns $R type veth peer name vb netns $B
ip -n $A addr add 10.98.1.1/24 dev va; ip -n $R addr add 10.98.1.2/24 dev ra
ip -n $R addr add 10.98.2.1/24 dev rb; ip -n $B addr add 10.98.2.2/24 dev vb
for x in "$A va" "$R ra" "$R rb" "$B vb"; do set -- $x; ip -n $1 link set $2 up; done
ip -n $A route add default via 10.98.1.2; ip -n $B route add default via 10.98.2.1
ip netns exec $R sysctl -qw net.ipv4.ip_forward=1
ip netns exec $R ethtool -K rb tso off gso off gro off >/dev/null 2>&1
ip netns exec $R ethtool -K ra gro off >/dev/null 2>&1
tc -n $R qdisc add dev rb root tbf rate 50mbit burst 32kbit latency 50ms
ip netns exec $B iperf3 -s -D -p 5201 >/dev/null 2>&1
ip netns exec $B iperf3 -s -D -p 5202 >/dev/null 2>&1
sleep 1
ip netns exec $A nstat -n
ip netns exec $A iperf3 -c 10.98.2.2 -p 5201 -P 120 -t 40 -J > /tmp/tbfy1.json 2>&1 &
ip netns exec $A iperf3 -c 10.98.2.2 -p 5202 -P 120 -t 40 -J > /tmp/tbfy2.json 2>&1 &
wait
ip netns exec $A nstat | grep -E "RetransFail|AbortOnTimeout|TCPTimeouts|RetransSegs"
grep -h -o '"error":[^,]*' /tmp/tbfy1.json /tmp/tbfy2.json | head
pkill -f "iperf3 -s -D -p 520[12]"
