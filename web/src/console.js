// A VM's serial console in xterm.js over the daemon's console WebSocket: the guest's output
// (from its recent history on), and what is typed or pasted goes to the guest. Several pages
// may watch one console at once.
import { Terminal } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';

const kPieceChars = 8192;  // UTF-8: at most 32 KiB a message

export class ConsoleView {
  constructor(element, statusElement, reconnectButton) {
    this.status = statusElement;
    this.reconnect = reconnectButton;
    this.term = new Terminal({
      scrollback: 5000,
      convertEol: true,  // test guests end lines with \n alone
      cursorBlink: true,
      fontSize: 13,
      fontFamily: 'ui-monospace, "DejaVu Sans Mono", monospace',
      theme: { background: '#101318' },
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.open(element);
    // Typed keys and pastes; a long paste goes in pieces below the daemon's 64 KiB message limit.
    this.term.onData((data) => {
      if (this.socket?.readyState !== WebSocket.OPEN) return;
      for (let at = 0; at < data.length; at += kPieceChars) this.socket.send(data.slice(at, at + kPieceChars));
    });
    window.addEventListener('resize', () => this.fit.fit());
    this.reconnect.addEventListener('click', () => this.open(this.name));
  }

  open(name) {
    this.close();
    this.name = name;
    this.term.reset();
    this.fit.fit();
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(
      `${scheme}://${location.host}/v1/vms/${encodeURIComponent(name)}/console/ws`);
    socket.binaryType = 'arraybuffer';
    socket.onopen = () => {
      this.setStatus('connected');
      this.term.focus();
    };
    socket.onmessage = (e) => this.term.write(new Uint8Array(e.data));
    socket.onclose = (e) => {
      if (this.socket !== socket) return;
      this.setStatus(`closed${e.reason ? `: ${e.reason}` : ''}`);
      this.reconnect.hidden = false;
    };
    this.socket = socket;
    this.reconnect.hidden = true;
    this.setStatus('connecting…');
  }

  close() {
    const socket = this.socket;
    this.socket = null;
    socket?.close();
  }

  setStatus(text) {
    this.status.textContent = `(${text})`;
  }
}
