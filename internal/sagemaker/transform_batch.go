package sagemaker

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"
)

// transformObject is one input object; rel is its key below the input
// prefix's last "/" (or its manifest entry), which names its output.
type transformObject struct{ bucket, key, rel string }

// transformInstance is a model container that takes requests: base is
// http://<addr>.
type transformInstance struct{ id, base string }

// maxTransformAnswer bounds one answer of the container; answerBudget
// bounds all the answers a job may hold at once (each worker holds one
// until it is written in order), so a job's answer limit is the lesser of
// maxTransformAnswer and answerBudget over its workers, and at least
// minTransformAnswer.
const (
	maxTransformAnswer = 100 << 20
	minTransformAnswer = 6 << 20
	answerBudget       = 1 << 30
)

var errAnswerTooLarge = errors.New("the model container's answer is larger than this job's limit per answer (the lesser of 100 MB and 1 GiB over InstanceCount × MaxConcurrentTransforms, at least 6 MB)")

// answerLimit is the largest answer a job of workers takes.
func answerLimit(workers int) int64 {
	return max(min(maxTransformAnswer, answerBudget/int64(max(workers, 1))), minTransformAnswer)
}

// batchRun is the data half of a transform job: it reads every object,
// sends its payloads to the instances (MaxConcurrentTransforms in flight
// per instance) and writes the answers, in the payloads' order, to the
// object's output. Memory holds at most a few payloads and answers per
// worker, never a whole object.
type batchRun struct {
	req       *CreateTransformJobRequest
	instances []transformInstance
	client    *http.Client
	// stream names an instance's log stream in failure reasons.
	stream func(instanceID string) string
	open   func(ctx context.Context, o transformObject) (io.ReadCloser, error)
	// put stores body, read to its end, as o's output.
	put func(ctx context.Context, o transformObject, body io.Reader) error
}

// batchTask is one payload of an object; done gets the container's answer.
type batchTask struct {
	obj     transformObject
	n       int // 1-based, within obj
	payload []byte
	done    chan []byte
}

// run transforms objs. It returns nil when every output is written, else
// why not: a FailureReason, or ctx's cause.
func (b *batchRun) run(ctx context.Context, objs []transformObject) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	workers := len(b.instances) * b.req.concurrency()
	tasks := make(chan *batchTask)
	var wg sync.WaitGroup
	for i := range workers {
		in := b.instances[i%len(b.instances)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case t, ok := <-tasks:
					if !ok {
						return
					}
					answer, err := b.invoke(ctx, in, t)
					if err != nil {
						cancel(err)
						return
					}
					t.done <- answer
				}
			}
		}()
	}
	// Objects whose output is being written; each holds an upload.
	writing := make(chan struct{}, workers)
	var writers sync.WaitGroup
	for _, o := range objs {
		select {
		case writing <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		pending := make(chan *batchTask, workers)
		writers.Add(1)
		go func() {
			defer writers.Done()
			defer func() { <-writing }()
			if err := b.assemble(ctx, o, pending); err != nil {
				cancel(err)
			}
		}()
		if err := b.produce(ctx, o, tasks, pending); err != nil {
			cancel(err)
		}
		// After cancel: assemble sees the job failed before it sees the end.
		close(pending)
	}
	close(tasks)
	writers.Wait()
	wg.Wait()
	return context.Cause(ctx)
}

// produce reads o, splits and batches it, and hands each payload to the
// workers, queueing it on pending for the assembler first.
func (b *batchRun) produce(ctx context.Context, o transformObject, tasks, pending chan<- *batchTask) error {
	body, err := b.open(ctx, o)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return failuref("ClientError: cannot read input object s3://%s/%s: %v", o.bucket, o.key, err)
	}
	defer body.Close()
	var r io.Reader = body
	if b.req.TransformInput.CompressionType == "Gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			return failuref("ClientError: input object s3://%s/%s is not gzip-compressed (CompressionType Gzip): %v", o.bucket, o.key, err)
		}
		defer zr.Close()
		r = zr
	}
	split, limit := b.req.split(), b.req.payload()
	batches := newBatcher(newRecordReader(r, split, limit), split, b.req.strategy(), limit)
	for n := 1; ; n++ {
		payload, err := batches.next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return failuref("ClientError: input object s3://%s/%s: %v", o.bucket, o.key, err)
		}
		t := &batchTask{obj: o, n: n, payload: payload, done: make(chan []byte, 1)}
		for _, q := range []chan<- *batchTask{pending, tasks} {
			select {
			case q <- t:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
	}
}

// assemble writes the answers queued on pending, in order, to o's output.
func (b *batchRun) assemble(ctx context.Context, o transformObject, pending <-chan *batchTask) error {
	pr, pw := io.Pipe()
	stored := make(chan error, 1)
	go func() {
		err := b.put(ctx, o, pr)
		pr.CloseWithError(io.ErrClosedPipe) // a writer still writing stops
		stored <- err
	}()
	line := b.req.assemble() == assembleLine
	err := func() error {
		for t := range pending {
			var answer []byte
			select {
			case answer = <-t.done:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
			if line {
				answer = append(answer, '\n')
			}
			if _, err := pw.Write(answer); err != nil {
				return err
			}
		}
		// pending is closed after the job is cancelled, never before.
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return nil
	}()
	if err != nil {
		pw.CloseWithError(err)
		if perr := <-stored; perr != nil && ctx.Err() == nil {
			return b.outputFailure(o, perr)
		}
		return err
	}
	pw.Close()
	if err := <-stored; err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		return b.outputFailure(o, err)
	}
	return nil
}

func (b *batchRun) outputFailure(o transformObject, err error) error {
	return failuref("ClientError: cannot write the output of s3://%s/%s: %v", o.bucket, o.key, err)
}

// invoke sends t to in, retrying what may pass on a second try (no answer,
// a 5xx) up to InvocationsMaxRetries times.
func (b *batchRun) invoke(ctx context.Context, in transformInstance, t *batchTask) ([]byte, error) {
	retries, timeout := defaultInvocationRetries, defaultInvocationTimeout
	if c := b.req.ModelClientConfig; c != nil {
		if c.InvocationsMaxRetries != nil {
			retries = *c.InvocationsMaxRetries
		}
		if c.InvocationsTimeoutInSeconds != 0 {
			timeout = c.InvocationsTimeoutInSeconds
		}
	}
	var why error
	for range retries + 1 {
		answer, status, err := b.post(ctx, in, t.payload, time.Duration(timeout)*time.Second)
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if err == nil && status == http.StatusOK {
			return answer, nil
		}
		where := fmt.Sprintf("payload %d of s3://%s/%s", t.n, t.obj.bucket, t.obj.key)
		if errors.Is(err, errAnswerTooLarge) {
			return nil, failuref("AlgorithmError: %v for %s", err, where)
		}
		if err != nil {
			why = failuref("AlgorithmError: the model container did not answer %s within %d s: %v. See log stream %s", where, timeout, err, b.stream(in.id))
			continue
		}
		kind := "server"
		if status >= 400 && status < 500 {
			kind = "client"
		}
		why = failuref("AlgorithmError: Received %s error (%d) from the model container for %s with message %q. See log stream %s",
			kind, status, where, strings.ToValidUTF8(string(answer), "\uFFFD"), b.stream(in.id))
		if kind == "client" {
			break // the same request fails the same way
		}
	}
	return nil, why
}

// maxQuoted bounds how much of a container's error answer a FailureReason
// quotes.
const maxQuoted = 512

// post sends one POST /invocations. An answer other than 200 is read up
// to maxQuoted bytes.
func (b *batchRun) post(ctx context.Context, in transformInstance, payload []byte, timeout time.Duration) ([]byte, int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, in.base+"/invocations", bytes.NewReader(payload))
	if err != nil {
		return nil, 0, err
	}
	if ct := b.req.TransformInput.ContentType; ct != "" {
		req.Header.Set("Content-Type", ct)
	}
	if a := b.req.TransformOutput.Accept; a != "" {
		req.Header.Set("Accept", a)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	limit := answerLimit(len(b.instances) * b.req.concurrency())
	if resp.StatusCode != http.StatusOK {
		limit = maxQuoted
	}
	answer, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, 0, err
	}
	if int64(len(answer)) > limit {
		if resp.StatusCode == http.StatusOK {
			return nil, 0, errAnswerTooLarge
		}
		answer = answer[:limit]
	}
	return answer, resp.StatusCode, nil
}
