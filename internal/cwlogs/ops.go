package cwlogs

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"convoy/internal/iam"
)

type logStream struct {
	LogStreamName       string `json:"logStreamName"`
	CreationTime        int64  `json:"creationTime"`
	FirstEventTimestamp int64  `json:"firstEventTimestamp,omitempty"`
	LastEventTimestamp  int64  `json:"lastEventTimestamp,omitempty"`
	LastIngestionTime   int64  `json:"lastIngestionTime"`
	ARN                 string `json:"arn"`
	StoredBytes         int64  `json:"storedBytes"`
}

func (s *Service) describeLogStreams(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		LogGroupName        string `json:"logGroupName"`
		LogStreamNamePrefix string `json:"logStreamNamePrefix"`
		OrderBy             string `json:"orderBy"`
		Descending          bool   `json:"descending"`
		NextToken           string `json:"nextToken"`
		Limit               int    `json:"limit"`
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.authorize(r, p, "logs:DescribeLogStreams", req.LogGroupName); err != nil {
		return nil, err
	}
	n, err := limit(req.Limit, maxStreams)
	if err != nil {
		return nil, err
	}
	if req.OrderBy != "" && req.OrderBy != "LogStreamName" {
		return nil, invalid("orderBy %s is not supported by this convoy; use LogStreamName", req.OrderBy)
	}
	if req.LogStreamNamePrefix == "" && req.LogGroupName == Group {
		return nil, invalid("this convoy lists one training job's streams at a time: give logStreamNamePrefix starting with the job's name (JOB/)")
	}
	start := 0
	if req.NextToken != "" {
		if start, err = strconv.Atoi(req.NextToken); err != nil || start < 0 {
			return nil, invalid("The specified nextToken is not valid.")
		}
	}
	streams, err := s.withPrefix(req.LogGroupName, req.LogStreamNamePrefix)
	if err != nil {
		return nil, err
	}
	if req.Descending {
		for i, j := 0, len(streams)-1; i < j; i, j = i+1, j-1 {
			streams[i], streams[j] = streams[j], streams[i]
		}
	}
	out := struct {
		LogStreams []logStream `json:"logStreams"`
		NextToken  string      `json:"nextToken,omitempty"`
	}{LogStreams: []logStream{}}
	for i := start; i < len(streams) && i < start+n; i++ {
		st := streams[i]
		ls := logStream{LogStreamName: st.name, CreationTime: st.mtime, LastIngestionTime: st.mtime, ARN: s.streamARN(req.LogGroupName, st.name), StoredBytes: st.size}
		if st.size > 0 {
			ls.FirstEventTimestamp, ls.LastEventTimestamp = st.mtime, st.mtime
		}
		out.LogStreams = append(out.LogStreams, ls)
	}
	if start+n < len(streams) {
		out.NextToken = strconv.Itoa(start + n)
	}
	return out, nil
}

type outputEvent struct {
	Timestamp     int64  `json:"timestamp"`
	Message       string `json:"message"`
	IngestionTime int64  `json:"ingestionTime"`
}

// inTime reports whether events stamped t fall in [start, end]; zero bounds
// are open.
func inTime(t, start, end int64) bool {
	return (start == 0 || t >= start) && (end == 0 || t <= end)
}

func (s *Service) getLogEvents(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		LogGroupName  string `json:"logGroupName"`
		LogStreamName string `json:"logStreamName"`
		StartTime     int64  `json:"startTime"`
		EndTime       int64  `json:"endTime"`
		NextToken     string `json:"nextToken"`
		Limit         int    `json:"limit"`
		StartFromHead bool   `json:"startFromHead"`
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.authorize(r, p, "logs:GetLogEvents", req.LogGroupName); err != nil {
		return nil, err
	}
	n, err := limit(req.Limit, maxEvents)
	if err != nil {
		return nil, err
	}
	// Tokens are positions in the stream: f/N reads forward from event N,
	// b/N backward from just before event N.
	forward, pos := req.StartFromHead, -1
	if req.NextToken != "" {
		dir, num, _ := strings.Cut(req.NextToken, "/")
		v, err := strconv.Atoi(num)
		if err != nil || v < 0 || (dir != "f" && dir != "b") {
			return nil, invalid("The specified nextToken is not valid.")
		}
		forward, pos = dir == "f", v
	}
	st, ok, err := s.open(req.LogGroupName, req.LogStreamName)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, notFound("The specified log stream does not exist.")
	}
	total := 0
	if !forward {
		if total, err = eachLine(st.path, func(int, string) bool { return true }); err != nil {
			return nil, err
		}
		if pos < 0 || pos > total {
			pos = total
		}
	} else if pos < 0 {
		pos = 0
	}
	first, end := pos, pos+n // events [first, end)
	if !forward {
		first, end = max(pos-n, 0), pos
	}
	// At most 1 MB (and at least one event), keeping the events nearest
	// where reading started; trimmed while reading, so a stream of long
	// lines never holds more than a page in memory.
	var events []outputEvent
	size := 0
	if inTime(st.mtime, req.StartTime, req.EndTime) {
		_, err = eachLine(st.path, func(i int, line string) bool {
			if i < first {
				return true
			}
			cost := len(line) + 26 // CloudWatch counts 26 bytes of overhead an event
			if forward && size+cost > maxPageBytes && len(events) > 0 {
				return false
			}
			events = append(events, outputEvent{Timestamp: st.mtime, Message: line, IngestionTime: st.mtime})
			size += cost
			for !forward && size > maxPageBytes && len(events) > 1 {
				size -= len(events[0].Message) + 26
				events[0] = outputEvent{}
				events = events[1:]
				first++
			}
			return i+1 < end
		})
		if err != nil {
			return nil, err
		}
	}
	if forward {
		end = first + len(events)
	}
	if events == nil {
		events = []outputEvent{}
	}
	return map[string]any{
		"events":            events,
		"nextForwardToken":  fmt.Sprintf("f/%d", end),
		"nextBackwardToken": fmt.Sprintf("b/%d", first),
	}, nil
}

type filteredEvent struct {
	LogStreamName string `json:"logStreamName"`
	Timestamp     int64  `json:"timestamp"`
	Message       string `json:"message"`
	IngestionTime int64  `json:"ingestionTime"`
	EventID       string `json:"eventId"`
}

type searchedStream struct {
	LogStreamName      string `json:"logStreamName"`
	SearchedCompletely bool   `json:"searchedCompletely"`
}

func (s *Service) filterLogEvents(r *http.Request, p *iam.Principal, body []byte) (any, error) {
	var req struct {
		LogGroupName        string   `json:"logGroupName"`
		LogStreamNames      []string `json:"logStreamNames"`
		LogStreamNamePrefix string   `json:"logStreamNamePrefix"`
		StartTime           int64    `json:"startTime"`
		EndTime             int64    `json:"endTime"`
		FilterPattern       string   `json:"filterPattern"`
		NextToken           string   `json:"nextToken"`
		Limit               int      `json:"limit"`
	}
	if err := decode(body, &req); err != nil {
		return nil, err
	}
	if err := s.authorize(r, p, "logs:FilterLogEvents", req.LogGroupName); err != nil {
		return nil, err
	}
	n, err := limit(req.Limit, maxEvents)
	if err != nil {
		return nil, err
	}
	var streams []stream
	switch {
	case len(req.LogStreamNames) > 0 && req.LogStreamNamePrefix != "":
		return nil, invalid("logStreamNames and logStreamNamePrefix are mutually exclusive")
	case len(req.LogStreamNames) > maxNamedCount:
		return nil, invalid("logStreamNames may name at most %d streams", maxNamedCount)
	case len(req.LogStreamNames) > 0:
		for _, name := range req.LogStreamNames {
			st, ok, err := s.open(req.LogGroupName, name)
			if err != nil {
				return nil, err
			}
			if !ok {
				return nil, notFound("The specified log stream does not exist: %s", name)
			}
			streams = append(streams, st)
		}
	case req.LogStreamNamePrefix != "" || req.LogGroupName != Group:
		if streams, err = s.withPrefix(req.LogGroupName, req.LogStreamNamePrefix); err != nil {
			return nil, err
		}
	default:
		return nil, invalid("this convoy filters one training job's streams at a time: give logStreamNames or a logStreamNamePrefix starting with the job's name (JOB/)")
	}
	// The token is STREAM/EVENT: the position to resume from.
	si, li := 0, 0
	if req.NextToken != "" {
		a, b, _ := strings.Cut(req.NextToken, "/")
		var err1, err2 error
		si, err1 = strconv.Atoi(a)
		li, err2 = strconv.Atoi(b)
		if err1 != nil || err2 != nil || si < 0 || li < 0 || si > len(streams) {
			return nil, invalid("The specified nextToken is not valid.")
		}
	}
	// A filter pattern is matched as a plain substring; a quoted one ("ERROR")
	// without its quotes.
	pattern := req.FilterPattern
	if len(pattern) >= 2 && pattern[0] == '"' && pattern[len(pattern)-1] == '"' {
		pattern = pattern[1 : len(pattern)-1]
	}
	events := []filteredEvent{}
	searched := []searchedStream{}
	size, next := 0, ""
	for ; si < len(streams) && next == ""; si, li = si+1, 0 {
		st := streams[si]
		if !inTime(st.mtime, req.StartTime, req.EndTime) {
			searched = append(searched, searchedStream{st.name, true})
			continue
		}
		_, err := eachLine(st.path, func(i int, line string) bool {
			if i < li || !strings.Contains(line, pattern) {
				return true
			}
			size += len(line) + 26
			if len(events) == n || (size > maxPageBytes && len(events) > 0) {
				next = fmt.Sprintf("%d/%d", si, i)
				return false
			}
			events = append(events, filteredEvent{LogStreamName: st.name, Timestamp: st.mtime, Message: line,
				IngestionTime: st.mtime, EventID: fmt.Sprintf("%s/%d", st.name, i)})
			return true
		})
		if err != nil {
			return nil, err
		}
		searched = append(searched, searchedStream{st.name, next == ""})
	}
	out := map[string]any{"events": events, "searchedLogStreams": searched}
	if next != "" {
		out["nextToken"] = next
	}
	return out, nil
}
