# A TAP in L1 (172.16.0.1/24) and a busybox nc server on TCP port 7000; L2
# pings 172.16.0.1 and sends a known payload to the server.
tunctl -t rsrc0 > /dev/null
ip addr add 172.16.0.1/24 dev rsrc0
ip link set rsrc0 up
# The server's stdin stays open (a sleep): on EOF there busybox nc half-closes,
# and the client then exits before it has sent everything.
sleep 280 | timeout 280 nc -l -p 7000 > /results/nc-received 2>/results/nc-stderr.txt &
run_l2 net --net tap=rsrc0
sleep 1
echo "received-bytes $(wc -c < /results/nc-received)" > /results/l1.txt
echo "received-md5 $(md5sum < /results/nc-received | cut -d' ' -f1)" >> /results/l1.txt
echo "expect-md5 $(yes RSRC-NET-PAYLOAD | head -c 20000 | md5sum | cut -d' ' -f1)" >> /results/l1.txt
echo "tap-rx-packets $(cat /sys/class/net/rsrc0/statistics/rx_packets)" >> /results/l1.txt
rm -f /results/nc-received
