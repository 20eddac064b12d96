/**
 * A real terminal for specs that test what a person sees: a detached tmux session of a fixed
 * size on its own server socket (-L, no config file), keys typed with send-keys, the screen read
 * with capture-pane -p. stop() ends that server only.
 */
import { run } from './process.ts';

export interface Terminal {
  /** Types the text literally (send-keys -l), then Enter unless enter: false. */
  type(text: string, o?: { enter?: boolean }): Promise<void>;
  /** A named key: C-c, Enter, ... */
  key(name: string): Promise<void>;
  /** A tmux format of the pane, e.g. #{cursor_flag} (1: the cursor is shown). */
  format(fmt: string): Promise<string>;
  /** The visible screen, one string per row, trailing blanks cut. */
  screen(): Promise<string[]>;
  stop(): Promise<void>;
}

export interface TerminalOptions {
  /** Unique per spec: the tmux server's socket name. */
  readonly name: string;
  readonly width: number;
  readonly height: number;
  /** The environment of the shell in the terminal (and of the tmux server). */
  readonly env: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** The program the terminal runs; default an interactive bash without rc files. */
  readonly argv?: readonly string[];
}

export async function startTerminal(o: TerminalOptions): Promise<Terminal> {
  const tmux = (args: readonly string[]): Promise<string> =>
    run(['/usr/bin/tmux', '-L', o.name, '-f', '/dev/null', ...args], {
      env: o.env,
      timeoutMs: 10_000,
      ...(o.cwd !== undefined ? { cwd: o.cwd } : {}),
    }).then((r) => r.stdout);
  const argv = o.argv ?? ['/bin/bash', '--noprofile', '--norc', '-i'];
  await tmux(['new-session', '-d', '-s', 'main', '-x', String(o.width), '-y', String(o.height), ...argv]);
  // The window keeps its size whatever client attaches (none does).
  await tmux(['set-option', '-t', 'main', 'window-size', 'manual']);
  return {
    async type(text, opts) {
      await tmux(['send-keys', '-t', 'main', '-l', text]);
      if (opts?.enter ?? true) await tmux(['send-keys', '-t', 'main', 'Enter']);
    },
    async key(name) {
      await tmux(['send-keys', '-t', 'main', name]);
    },
    async format(fmt) {
      return (await tmux(['display-message', '-p', '-t', 'main', fmt])).trim();
    },
    async screen() {
      return (await tmux(['capture-pane', '-p', '-t', 'main'])).split('\n').map((l) => l.trimEnd());
    },
    async stop() {
      await run(['/usr/bin/tmux', '-L', o.name, 'kill-server'], { env: o.env, allowExit: true, timeoutMs: 10_000 });
    },
  };
}
