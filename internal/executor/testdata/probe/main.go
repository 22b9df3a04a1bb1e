// Command probe is the process the executor tests run in their containers.
// Its arguments are steps separated by "--"; each prints what it saw:
//
//	env                    hostname, cwd, uid, capabilities, environment
//	exit N                 exit with status N
//	write PATH             try to create PATH: "write PATH ok" or "write PATH denied: …"
//	read PATH              print the file
//	unshare                try to create a user namespace
//	serve PORT             accept one TCP connection, echo one line, return
//	dial ADDR MSG          dial (retrying up to 15 s), send MSG, print the echo
//	reach ADDR…            one dial each, in parallel (2 s): "reach ADDR ok" or "reach ADDR fail: …"
//	script PATH            wait for PATH, then run its lines as steps
//	sleep MARKER           wait for SIGTERM, write MARKER, exit 7 (after 60 s: exit 9)
//	ignore-term            ignore SIGTERM and sleep 60 s
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	var step []string
	for _, a := range append(os.Args[1:], "--") {
		if a != "--" {
			step = append(step, a)
			continue
		}
		if len(step) > 0 {
			run(step)
		}
		step = nil
	}
}

func run(s []string) {
	switch s[0] {
	case "env":
		h, _ := os.Hostname()
		wd, _ := os.Getwd()
		fmt.Printf("hostname=%s cwd=%s uid=%d\n", h, wd, os.Getuid())
		if st, err := os.ReadFile("/proc/self/status"); err == nil {
			for _, l := range strings.Split(string(st), "\n") {
				if strings.HasPrefix(l, "Cap") || strings.HasPrefix(l, "NoNewPrivs") || strings.HasPrefix(l, "Seccomp:") {
					fmt.Println(strings.Join(strings.Fields(l), " "))
				}
			}
		}
		env := os.Environ()
		sort.Strings(env)
		for _, e := range env {
			fmt.Println("env", e)
		}
	case "exit":
		n, _ := strconv.Atoi(s[1])
		os.Exit(n)
	case "write":
		if err := os.WriteFile(s[1], []byte("probe\n"), 0o644); err != nil {
			fmt.Printf("write %s denied: %v\n", s[1], err)
		} else {
			fmt.Printf("write %s ok\n", s[1])
		}
	case "read":
		b, err := os.ReadFile(s[1])
		fmt.Printf("read %s: %q %v\n", s[1], b, err)
	case "unshare":
		if err := syscall.Unshare(syscall.CLONE_NEWUSER); err != nil {
			fmt.Printf("unshare denied: %v\n", err)
		} else {
			fmt.Println("unshare ok")
		}
	case "serve":
		ln, err := net.Listen("tcp", ":"+s[1])
		if err != nil {
			fmt.Println("serve:", err)
			os.Exit(2)
		}
		fmt.Println("serving", ln.Addr())
		ln.(*net.TCPListener).SetDeadline(time.Now().Add(20 * time.Second))
		c, err := ln.Accept()
		if err != nil {
			fmt.Println("accept:", err)
			os.Exit(2)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			fmt.Printf("served nothing from %s: %v\n", c.RemoteAddr(), err)
			return
		}
		fmt.Printf("served %q from %s\n", strings.TrimSpace(line), c.RemoteAddr())
		fmt.Fprintf(c, "echo %s", line)
		c.Close()
		ln.Close()
	case "dial":
		deadline := time.Now().Add(15 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", s[1], time.Second)
			if err != nil {
				if time.Now().After(deadline) {
					fmt.Println("dial:", err)
					os.Exit(3)
				}
				time.Sleep(20 * time.Millisecond)
				continue
			}
			c.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(c, "%s\n", s[2])
			line, err := bufio.NewReader(c).ReadString('\n')
			fmt.Printf("dialed %s got %q %v\n", s[1], strings.TrimSpace(line), err)
			c.Close()
			return
		}
	case "reach":
		// In parallel: a dropped SYN costs the whole timeout.
		out := make([]string, len(s)-1)
		var wg sync.WaitGroup
		for i, addr := range s[1:] {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.DialTimeout("tcp", addr, 2*time.Second)
				if err != nil {
					out[i] = fmt.Sprintf("reach %s fail: %v", addr, err)
					return
				}
				c.Close()
				out[i] = fmt.Sprintf("reach %s ok", addr)
			}()
		}
		wg.Wait()
		for _, l := range out {
			fmt.Println(l)
		}
	case "script":
		var data []byte
		for {
			var err error
			if data, err = os.ReadFile(s[1]); err == nil {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) > 0 {
				run(f)
			}
		}
	case "sleep":
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGTERM)
		fmt.Println("sleeping")
		select {
		case <-ch:
			os.WriteFile(s[1], []byte("got SIGTERM\n"), 0o644)
			fmt.Println("got SIGTERM")
			os.Exit(7)
		case <-time.After(60 * time.Second):
			os.Exit(9)
		}
	case "ignore-term":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ignoring SIGTERM")
		time.Sleep(60 * time.Second)
	default:
		fmt.Println("unknown step", s)
		os.Exit(100)
	}
}
