// The compiled reference for the benchmark: a minimal Go net/http responder that answers
// every request with the same JSON bytes as the sidecar's ready /health (a fixed 200 body,
// no state). Keep-alive is off by default, as the kubelet opens one connection per probe;
// -keepalive turns it on for the keep-alive comparison.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"strconv"
)

const readyBody = `{"endpoints":{"generate":"ready"},"status":"ready","uptime":{"nanos":354401046,"secs":1}}`

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "address to listen on")
	keepAlive := flag.Bool("keepalive", false, "keep connections open between requests")
	body := flag.String("body", readyBody, "the body every request gets")
	flag.Parse()

	payload := []byte(*body)
	length := strconv.Itoa(len(payload))
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{length}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(payload)
	})

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	server := &http.Server{Handler: handler}
	server.SetKeepAlivesEnabled(*keepAlive)
	// The bench reads the chosen port from this line.
	log.SetFlags(0)
	log.Printf("listening on %s", listener.Addr())
	log.Fatal(server.Serve(listener))
}
