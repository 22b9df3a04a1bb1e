package sigv4

import (
	"container/list"
	"crypto/hmac"
	"crypto/sha256"
	"sync"
)

// keyCacheSize bounds the signing keys a Verifier keeps. A key is good for
// one secret, day, region and service, so a busy server needs a handful per
// active access key.
const keyCacheSize = 512

// keyCache is a small LRU of derived signing keys. Entries are found by a
// hash of the secret, so the map holds no secret in the clear.
type keyCache struct {
	mu sync.Mutex
	m  map[keyID]*list.Element
	l  list.List // of *keyEntry, most recent first
}

type keyID struct {
	secret                [sha256.Size]byte
	date, region, service string
}

type keyEntry struct {
	id  keyID
	key []byte
}

// signingKey returns HMAC("AWS4"+secret, date, region, service,
// "aws4_request") from the cache, deriving it on a miss.
func (c *keyCache) signingKey(secret, date, region, service string) []byte {
	id := keyID{sha256.Sum256([]byte(secret)), date, region, service}
	c.mu.Lock()
	if e, ok := c.m[id]; ok {
		c.l.MoveToFront(e)
		key := e.Value.(*keyEntry).key
		c.mu.Unlock()
		return key
	}
	c.mu.Unlock()

	key := deriveKey(secret, date, region, service)

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[keyID]*list.Element)
	}
	if _, ok := c.m[id]; !ok {
		c.m[id] = c.l.PushFront(&keyEntry{id, key})
		if c.l.Len() > keyCacheSize {
			last := c.l.Back()
			c.l.Remove(last)
			delete(c.m, last.Value.(*keyEntry).id)
		}
	}
	return key
}

func deriveKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), date)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, terminator)
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
