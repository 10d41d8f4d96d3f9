// Command testapp is the real node's test image (cluster/node/images.sh builds it; tests/e2e/test_real_node.py
// runs it). One static binary, no libraries, no shell in the image:
//
//	testapp [serve]          HTTP on $PORT (8080): / answers "hello from <hostname>", /healthz 200,
//	                         /ready 200 until /tmp/not-ready exists, then 503. Logs one line per request.
//	testapp alloc <MiB>      allocates and touches <MiB> MiB, 1 MiB at a time, printing the total, then sleeps:
//	                         under a smaller memory limit the kernel's OOM killer ends it.
//	testapp not-ready        creates /tmp/not-ready (for kubectl exec: the readiness probe fails from then on).
//	testapp echo <words...>  prints the words (for kubectl exec).
//	testapp get <url>        prints the body of an HTTP GET (2 s timeout); exit 1 on any error or non-200.
//	testapp dial <host:port> opens a TCP connection (2 s timeout) and closes it; exit 1 if it fails.
//	testapp api <path>       GET of the API server as an in-cluster client does it: the kubernetes Service
//	                         ($KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT), verified with the
//	                         ServiceAccount's CA, authenticated with its token; prints the body.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

const notReadyFile = "/tmp/not-ready"

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	args := os.Args[1:]
	cmd := "serve"
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		serve()
	case "alloc":
		if len(args) != 1 {
			log.Fatal("usage: testapp alloc <MiB>")
		}
		alloc(args[0])
	case "not-ready":
		if err := os.WriteFile(notReadyFile, nil, 0o644); err != nil {
			log.Fatal(err)
		}
	case "echo":
		fmt.Println(strings.Join(args, " "))
	case "get":
		if len(args) != 1 {
			log.Fatal("usage: testapp get <url>")
		}
		get(args[0])
	case "api":
		if len(args) != 1 {
			log.Fatal("usage: testapp api <path>")
		}
		api(args[0])
	case "dial":
		if len(args) != 1 {
			log.Fatal("usage: testapp dial <host:port>")
		}
		conn, err := net.DialTimeout("tcp", args[0], 2*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("connected to %s from %s\n", conn.RemoteAddr(), conn.LocalAddr())
		_ = conn.Close()
	default:
		log.Fatalf("unknown command %q (serve, alloc, not-ready, echo, get, dial)", cmd)
	}
}

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

func api(path string) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		log.Fatal("api: KUBERNETES_SERVICE_HOST/PORT are not set")
	}
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		log.Fatal(err)
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		log.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		log.Fatal("api: no certificate in " + saDir + "/ca.crt")
	}
	req, err := http.NewRequest(http.MethodGet, "https://"+net.JoinHostPort(host, port)+path, nil)
	if err != nil {
		log.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	client := &http.Client{Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	show(client.Do(req))
}

func get(url string) {
	client := &http.Client{Timeout: 2 * time.Second}
	show(client.Get(url))
}

func show(resp *http.Response, err error) {
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	url := resp.Request.URL.String()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(body))
	if resp.StatusCode != http.StatusOK {
		log.Fatalf("GET %s: %s", url, resp.Status)
	}
}

func serve() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host, _ := os.Hostname()
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		log.Printf("%s %s from %s", r.Method, r.URL.Path, r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s\n", host)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if _, err := os.Stat(notReadyFile); err == nil {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	log.Printf("testapp %s listening on :%s", host, port)
	srv := &http.Server{Addr: ":" + port, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

func alloc(arg string) {
	mib, err := strconv.Atoi(arg)
	if err != nil || mib < 1 {
		log.Fatalf("alloc: %q is not a positive number of MiB", arg)
	}
	var held [][]byte
	for i := 1; i <= mib; i++ {
		b := make([]byte, 1<<20)
		for j := range b {
			if j%4096 == 0 {
				b[j] = 1 // touch every page, so it is really resident
			}
		}
		held = append(held, b)
		if i%8 == 0 || i == mib {
			log.Printf("allocated %d MiB", i)
		}
	}
	log.Printf("holding %d MiB", len(held))
	for {
		time.Sleep(time.Hour)
	}
}
