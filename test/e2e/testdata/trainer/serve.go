package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// serve is the inference mode (run with the single argument "serve", the
// SageMaker serving contract): GET /ping and POST /invocations on :8080,
// predicting from /opt/ml/model/model.txt, which a training job wrote.
// SERVE_MODE in the model's Environment changes it:
//
//	(unset)   text/csv rows in, {"model":…,"rows":…,"tag":…} out; other
//	          content types get 415, the body "boom" gets 500, the body
//	          "crash" makes the process exit, "hang" makes it stop
//	          answering anything after this answer; with Accept
//	          application/jsonlines, one line per row, streamed
//	echo      the body back as it came (for the benchmark)
//	exit      exit 3 at once, before serving (a model that cannot load)
//	unhealthy serve, but answer /ping with 503 (a model still loading)
//
// In echo mode, SERVE_FAIL_ON makes a body that contains it get 500 and
// "poisoned record", and SERVE_DELAY (a Go duration) delays every answer:
// a batch transform's failing and long-running models.
func serve() {
	mode, tag := os.Getenv("SERVE_MODE"), os.Getenv("SERVE_TAG")
	if mode == "exit" {
		fmt.Fprintln(os.Stderr, "model refused to load: no weights")
		os.Exit(3)
	}
	model, err := os.ReadFile("/opt/ml/model/model.txt")
	if err != nil && mode != "echo" {
		fmt.Fprintln(os.Stderr, "no model:", err)
		os.Exit(4)
	}
	sum := sha256.Sum256(model)
	digest := hex.EncodeToString(sum[:8])
	writable := os.WriteFile("/opt/ml/model/x", []byte("x"), 0o644) == nil
	fmt.Printf("serving model %s (tag %q) on :8080, model dir writable=%t\n", digest, tag, writable)

	mux := http.NewServeMux()
	var hung atomic.Bool
	mux.HandleFunc("GET /ping", func(w http.ResponseWriter, r *http.Request) {
		if hung.Load() {
			select {} // a deadlocked model server: the connection stays open, unanswered
		}
		if mode == "unhealthy" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	mux.HandleFunc("POST /invocations", func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if mode == "echo" {
			if d, err := time.ParseDuration(os.Getenv("SERVE_DELAY")); err == nil {
				time.Sleep(d)
			}
			if m := os.Getenv("SERVE_FAIL_ON"); m != "" && strings.Contains(string(body), m) {
				w.WriteHeader(http.StatusInternalServerError)
				io.WriteString(w, "poisoned record")
				return
			}
			w.Header().Set("Content-Type", "application/octet-stream")
			w.Write(body)
			return
		}
		if ct := r.Header.Get("Content-Type"); ct != "text/csv" {
			w.WriteHeader(http.StatusUnsupportedMediaType)
			fmt.Fprintf(w, "unsupported content type %q; this model takes text/csv", ct)
			return
		}
		switch strings.TrimSpace(string(body)) {
		case "boom":
			w.WriteHeader(http.StatusInternalServerError)
			io.WriteString(w, "model failure")
			return
		case "crash":
			fmt.Println("crashing on request")
			os.Exit(1)
		case "hang":
			fmt.Println("hanging on request")
			hung.Store(true)
			io.WriteString(w, "hanging")
			return
		}
		if hung.Load() {
			select {}
		}
		if a := r.Header.Get("X-Amzn-SageMaker-Custom-Attributes"); a != "" {
			w.Header().Set("X-Amzn-SageMaker-Custom-Attributes", "seen="+a)
		}
		if r.Header.Get("Accept") == "application/jsonlines" {
			// Streamed: one line per row, each flushed on its own.
			w.Header().Set("Content-Type", "application/jsonlines")
			for i, row := range strings.Split(strings.TrimSpace(string(body)), "\n") {
				fmt.Fprintf(w, "{\"model\":%q,\"row\":%d,\"input\":%q}\n", digest, i, row)
				w.(http.Flusher).Flush()
			}
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"model": digest, "rows": strings.Count(string(body), "\n"), "tag": tag})
	})
	if err := http.ListenAndServe(":8080", mux); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(5)
	}
}
