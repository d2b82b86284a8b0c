// probe: the cluster tests' workload. One static binary, no dependencies, so
// the test image is this file and busybox (for ping).
//
//	probe serve [PORT]          TCP and UDP echo on PORT (default 8080)
//	probe tcp HOST:PORT [MSG]   one TCP exchange; prints the echo, exit 1 on failure
//	probe udp HOST:PORT [MSG]   one UDP exchange (2 s timeout); likewise
//	probe udp-stream HOST:PORT SECONDS
//	                            one numbered datagram every 10 ms for SECONDS;
//	                            prints "sent N received M" (echoes received)
//	probe version
package main

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

const version = "meshauth-1"

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve|tcp|udp|udp-stream|version ...")
	}
	switch os.Args[1] {
	case "serve":
		port := "8080"
		if len(os.Args) > 2 {
			port = os.Args[2]
		}
		serve(port)
	case "tcp":
		tcpOnce(arg(2), msg())
	case "udp":
		udpOnce(arg(2), msg())
	case "udp-stream":
		secs, err := strconv.Atoi(arg(3))
		if err != nil {
			fail("udp-stream: SECONDS: " + err.Error())
		}
		udpStream(arg(2), time.Duration(secs)*time.Second)
	case "version", "-v":
		fmt.Println(version)
	default:
		fail("unknown command " + os.Args[1])
	}
}

func arg(i int) string {
	if len(os.Args) <= i {
		fail("missing argument")
	}
	return os.Args[i]
}

func msg() string {
	if len(os.Args) > 3 {
		return os.Args[3]
	}
	host, _ := os.Hostname()
	return "hello from " + host
}

func fail(s string) {
	fmt.Fprintln(os.Stderr, "probe:", s)
	os.Exit(1)
}

func serve(port string) {
	ln, err := net.Listen("tcp", ":"+port)
	if err != nil {
		fail(err.Error())
	}
	pc, err := net.ListenPacket("udp", ":"+port)
	if err != nil {
		fail(err.Error())
	}
	go func() {
		buf := make([]byte, 65535)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			continue
		}
		go func(c net.Conn) {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil && err != io.EOF {
				return
			}
			// The echo names the server and the peer as the server saw it,
			// so a test can tell whether the source address was kept.
			host, _ := os.Hostname()
			fmt.Fprintf(c, "%s from %s: %s", host, c.RemoteAddr(), line)
		}(c)
	}
}

func tcpOnce(addr, m string) {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fail(err.Error())
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := fmt.Fprintln(c, m); err != nil {
		fail(err.Error())
	}
	b, err := io.ReadAll(c)
	if err != nil || len(b) == 0 {
		fail(fmt.Sprintf("no echo: %v", err))
	}
	fmt.Print(string(b))
}

func udpOnce(addr, m string) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fail(err.Error())
	}
	defer c.Close()
	buf := make([]byte, 65535)
	// Three tries: the first datagram may be dropped while an ARP entry is made.
	for i := 0; i < 3; i++ {
		_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		if _, err := c.Write([]byte(m)); err != nil {
			continue
		}
		if n, err := c.Read(buf); err == nil {
			fmt.Println(string(buf[:n]))
			return
		}
	}
	fail("no UDP echo from " + addr)
}

func udpStream(addr string, d time.Duration) {
	c, err := net.Dial("udp", addr)
	if err != nil {
		fail(err.Error())
	}
	defer c.Close()
	received := 0
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 2048)
		for {
			_ = c.SetReadDeadline(time.Now().Add(d + 2*time.Second))
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					close(done)
					return
				}
				continue // ECONNREFUSED while the path is down: keep counting
			}
			received++
		}
	}()
	sent := 0
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if _, err := c.Write([]byte(strconv.Itoa(sent))); err == nil {
			sent++
		}
		time.Sleep(10 * time.Millisecond)
	}
	<-done
	fmt.Printf("sent %d received %d\n", sent, received)
}
