set -u
A=tbfx-a; B=tbfx-b
cleanup(){ ip netns del $A 2>/dev/null; ip netns del $B 2>/dev/null; }
trap cleanup EXIT
cleanup
ip netns add $A; ip netns add $B
ip link add va netns $A type veth peer name vb netns $B
ip -n $A addr add 10.99.0.1/24 dev va; ip -n $B addr add 10.99.0.2/24 dev vb
ip -n $A link set va up; ip -n $B link set vb up; ip -n $A link set lo up; ip -n $B link set lo up
ip netns exec $A ethtool -K va tso off gso off gro off >/dev/null 2>&1
ip -n $A link set va txqueuelen 1000
tc -n $A qdisc add dev va root tbf rate 50mbit burst 32kbit latency 50ms
ip netns exec $B iperf3 -s -D -p 5201 >/dev/null 2>&1
ip netns exec $B iperf3 -s -D -p 5202 >/dev/null 2>&1
sleep 1
ip netns exec $A nstat -n
ip netns exec $A iperf3 -c 10.99.0.2 -p 5201 -P 120 -t 40 -J > /tmp/tbfexp1.json 2>&1 &
ip netns exec $A iperf3 -c 10.99.0.2 -p 5202 -P 120 -t 40 -J > /tmp/tbfexp2.json 2>&1 &
wait
ip netns exec $A nstat | grep -E "RetransFail|AbortOnTimeout|TCPTimeouts|Retrans"
grep -h -o '"error":[^,]*' /tmp/tbfexp1.json /tmp/tbfexp2.json | head
pkill -f "iperf3 -s -D -p 520[12]"
