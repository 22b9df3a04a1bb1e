package awsproto

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
)

// DecodeJSON reads a JSON-protocol (awsJson1_1) request body into v. An
// empty body is an empty input; anything else must be a JSON object of the
// operation's shape, or the error is a SerializationException.
func DecodeJSON(body []byte, v any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil
	}
	if body[0] != '{' {
		return Errorf(http.StatusBadRequest, "SerializationException", "the request body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return Errorf(http.StatusBadRequest, "SerializationException", "%s has the wrong type: %s is not a %s", te.Field, te.Value, te.Type)
		}
		return Errorf(http.StatusBadRequest, "SerializationException", "the request body is not valid JSON for this operation: %v", err)
	}
	return nil
}

// WriteJSON writes a JSON-protocol success response. It returns an error
// only when v does not encode, before anything is written.
func WriteJSON(w http.ResponseWriter, v any) error {
	buf, err := json.Marshal(v)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/x-amz-json-1.1")
	h.Set("Content-Length", strconv.Itoa(len(buf)))
	w.WriteHeader(http.StatusOK)
	w.Write(buf) // a client gone mid-response is not the handler's error
	return nil
}
