package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// canary is the mode "canary": the hosts exchange a known string many
// times, over TCP and over UDP, for tests that look for it on the wire.
// Hyperparameters:
//
//	canary   the string (required)
//	rounds   TCP round trips (and UDP datagrams) algo-2 makes (100); 0
//	         means until an exchange fails, for tests that break the
//	         network under the job
//	port     the TCP and UDP port algo-1 serves on (7777)
//
// algo-1 answers each TCP line "<canary> <i>" with "ack <canary> <i>"
// and counts the UDP datagrams it receives; algo-2 dials algo-1 (retrying
// while refused: algo-1 may not listen yet) and sends both. UDP is fire
// and forget: its loss (or its refusal, under inter-node encryption,
// which drops it) never fails the job. A TCP failure is said on the
// host's output; the host then waits for SIGTERM, so that the platform's
// own reaction, not the trainer's exit, ends the job.
func canary(host string, hps map[string]string) {
	word := hps["canary"]
	if word == "" {
		fail("canary: the hyperparameter canary is required")
	}
	rounds, err := strconv.Atoi(cmp(hps["rounds"], "100"))
	if err != nil || rounds < 0 {
		fail("canary: bad rounds " + hps["rounds"])
	}
	port := cmp(hps["port"], "7777")
	signal.Notify(sigterm, syscall.SIGTERM)
	if host == "algo-1" {
		canaryServe(word, port)
		return
	}
	canaryDial(word, port, rounds)
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// sigterm is caught from the start: a platform that stops the job on a
// network failure may signal before the exchange has met that failure,
// and the exchange goes on until it does (the test looks for it).
var sigterm = make(chan os.Signal, 1)

// untilSIGTERM reports a failure and waits to be stopped.
func untilSIGTERM(format string, args ...any) {
	fmt.Printf("canary: "+format+"\n", args...)
	<-sigterm
	fmt.Println("canary: stopped")
	os.Exit(0)
}

func canaryServe(word, port string) {
	var udpGot atomic.Int64
	pc, err := net.ListenPacket("udp4", ":"+port)
	if err != nil {
		fail(err.Error())
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), word) {
				udpGot.Add(1)
			}
		}
	}()
	ln, err := net.Listen("tcp4", ":"+port)
	if err != nil {
		fail(err.Error())
	}
	c, err := ln.Accept()
	if err != nil {
		fail(err.Error())
	}
	r := bufio.NewReader(c)
	n := 0
	for {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) && line == "" {
			break // algo-2 is done
		}
		if err != nil {
			untilSIGTERM("exchange failed on algo-1 after %d: %v", n, err)
		}
		if !strings.HasPrefix(line, word+" ") {
			fail("canary: unexpected line " + line)
		}
		if _, err := fmt.Fprintf(c, "ack %s", line); err != nil {
			untilSIGTERM("exchange failed on algo-1 after %d: %v", n, err)
		}
		n++
		if n == 1 || n%100 == 0 {
			fmt.Printf("canary: algo-1 answered %d\n", n)
		}
	}
	c.Close()
	time.Sleep(200 * time.Millisecond) // the last datagrams
	fmt.Fprintf(&model, "tcp exchanges %d\nudp received %d\n", n, udpGot.Load())
	fmt.Printf("canary: algo-1 done: %d TCP exchanges, %d UDP datagrams received\n", n, udpGot.Load())
}

func canaryDial(word, port string, rounds int) {
	var c net.Conn
	var err error
	for range 600 {
		if c, err = net.Dial("tcp4", "algo-1:"+port); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		fail("canary: dial algo-1: " + err.Error())
	}
	u, err := net.Dial("udp4", "algo-1:"+port)
	if err != nil {
		fail(err.Error())
	}
	udpErrs := 0
	r := bufio.NewReader(c)
	i := 0
	for ; rounds == 0 || i < rounds; i++ {
		msg := fmt.Sprintf("%s %d\n", word, i)
		if _, err := u.Write([]byte(msg)); err != nil {
			udpErrs++
		}
		if _, err := c.Write([]byte(msg)); err != nil {
			untilSIGTERM("exchange failed on algo-2 after %d: %v", i, err)
		}
		ack, err := r.ReadString('\n')
		if err != nil {
			untilSIGTERM("exchange failed on algo-2 after %d: %v", i, err)
		}
		if ack != "ack "+msg {
			fail("canary: unexpected answer " + ack)
		}
		if i == 0 || (i+1)%100 == 0 {
			fmt.Printf("canary: algo-2 exchanged %d\n", i+1)
		}
		if rounds == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.Close()
	fmt.Fprintf(&model, "tcp exchanges %d\nudp sent %d errors %d\n", i, i, udpErrs)
	fmt.Printf("canary: algo-2 done: %d TCP exchanges, %d UDP datagrams sent, %d refused\n", i, i, udpErrs)
}
