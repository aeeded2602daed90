// goagent.exe: a Windows agent written in Go, built with GOOS=windows by Debian's Go
// toolchain, that reaches fltlib.dll the way Go programs do: syscall.NewLazyDLL, no cgo.
//
//	goagent.exe PORT
//
// It connects to PORT, answers FilterSendMessage's "ping" probe once, then takes kernel
// messages with synchronous FilterGetMessage calls and replies to each with one byte:
// 0 when the message contains "foul", 1 otherwise. It exits 0 when the port is
// disconnected (0x80070006) and 2 when the connect fails.
package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"unsafe"
)

var (
	fltlib      = syscall.NewLazyDLL("fltlib.dll")
	connectPort = fltlib.NewProc("FilterConnectCommunicationPort")
	sendMessage = fltlib.NewProc("FilterSendMessage")
	getMessage  = fltlib.NewProc("FilterGetMessage")
	replyMsg    = fltlib.NewProc("FilterReplyMessage")
)

const eHandle = 0x80070006

func hresult(r uintptr) uint32 { return uint32(r) }

func main() {
	if len(os.Args) != 2 {
		fmt.Println("usage: goagent.exe PORT")
		os.Exit(2)
	}
	name, _ := syscall.UTF16PtrFromString(os.Args[1])
	var port syscall.Handle
	r, _, _ := connectPort.Call(uintptr(unsafe.Pointer(name)), 0, 0, 0, 0, uintptr(unsafe.Pointer(&port)))
	if hr := hresult(r); hr != 0 {
		fmt.Printf("connect 0x%08x\n", hr)
		os.Exit(2)
	}
	defer syscall.CloseHandle(port)
	fmt.Println("connected")

	ping := []byte("ping")
	out := make([]byte, 16)
	var got uint32
	r, _, _ = sendMessage.Call(uintptr(port), uintptr(unsafe.Pointer(&ping[0])), uintptr(len(ping)),
		uintptr(unsafe.Pointer(&out[0])), uintptr(len(out)), uintptr(unsafe.Pointer(&got)))
	fmt.Printf("send 0x%08x %s\n", hresult(r), out[:got])

	// FILTER_MESSAGE_HEADER (16 bytes) + the message.
	buf := make([]byte, 16+1024)
	for {
		r, _, _ = getMessage.Call(uintptr(port), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0)
		if hr := hresult(r); hr == eHandle {
			fmt.Println("disconnected")
			return
		} else if hr != 0 {
			fmt.Printf("get 0x%08x\n", hr)
			os.Exit(1)
		}
		id := binary.LittleEndian.Uint64(buf[8:16])
		body := buf[16:]
		if end := bytes.IndexByte(body, 0); end >= 0 {
			body = body[:end]
		}
		safe := byte(1)
		if bytes.Contains(body, []byte("foul")) {
			safe = 0
		}
		// FILTER_REPLY_HEADER {Status, pad, MessageId} + 1 byte.
		reply := make([]byte, 17)
		binary.LittleEndian.PutUint64(reply[8:16], id)
		reply[16] = safe
		r, _, _ = replyMsg.Call(uintptr(port), uintptr(unsafe.Pointer(&reply[0])), uintptr(len(reply)))
		fmt.Printf("verdict id=%d safe=%d reply=0x%08x\n", id, safe, hresult(r))
	}
}
