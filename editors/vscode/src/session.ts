/*
 * The editor-independent half of the extension: what draftline speaks beyond plain LSP
 * (initializationOptions, the Copilot-compatible notifications, `draftline/status`) and a
 * small stdio client (`DraftlineSession`) that runs under plain Node, without the `vscode`
 * module. `extension.ts` wires the same helpers into VS Code through vscode-languageclient;
 * `test/smoke.ts` drives the real `draftline serve` with `DraftlineSession`.
 *
 * Nothing in this file may import 'vscode'.
 */

import { ChildProcess, spawn } from 'child_process';
import {
    createProtocolConnection,
    DidChangeConfigurationNotification,
    DidOpenTextDocumentNotification,
    ExecuteCommandRequest,
    ExitNotification,
    InitializedNotification,
    InitializeRequest,
    InitializeResult,
    InlineCompletionItem,
    InlineCompletionList,
    InlineCompletionRequest,
    InlineCompletionTriggerKind,
    CompletionList,
    CompletionItem,
    CompletionRequest,
    LogMessageNotification,
    Position,
    ProtocolConnection,
    Range,
    ShowMessageNotification,
    ShutdownRequest,
    StreamMessageReader,
    StreamMessageWriter,
    WorkDoneProgressCreateRequest,
    ProgressToken,
    WorkDoneProgressBegin,
    WorkDoneProgressReport,
    WorkDoneProgressEnd,
} from 'vscode-languageserver-protocol/node';

/** The server's workspace command that records an accepted draft: args [uri, draftText]. */
export const ACCEPT_COMMAND = 'draftline.accept';

export const Methods = {
    status: 'draftline/status',
    didShowCompletion: 'textDocument/didShowCompletion',
    didPartiallyAcceptCompletion: 'textDocument/didPartiallyAcceptCompletion',
} as const;

/** The `draftline.*` settings the extension passes on (all optional: server defaults). */
export interface DraftlineSettings {
    model?: string;
    drafts?: number;
    maxTokens?: number;
    debounceMs?: number;
    latencyBudgetMs?: number;
    requestCap?: number;
    farTokens?: number;
    speculate?: number;
    ahead?: boolean;
    monitors?: { enabled?: boolean };
}

function defined<T extends object>(o: T): Partial<T> {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(o)) {
        if (v !== undefined && v !== null && v !== '') {
            out[k] = v;
        }
    }
    return out as Partial<T>;
}

/** initializationOptions for `initialize` (the only place the server takes `model` from). */
export function initializationOptions(s: DraftlineSettings): Record<string, unknown> {
    const o: Record<string, unknown> = defined({
        model: s.model,
        drafts: s.drafts,
        maxTokens: s.maxTokens,
        debounceMs: s.debounceMs,
        latencyBudgetMs: s.latencyBudgetMs,
        requestCap: s.requestCap,
        farTokens: s.farTokens,
        speculate: s.speculate,
        ahead: s.ahead,
    });
    if (s.monitors && s.monitors.enabled !== undefined) {
        o.monitors = { enabled: s.monitors.enabled };
    }
    return o;
}

/** workspace/didChangeConfiguration settings: everything but the model (which the server
 * ignores there anyway: a workspace must not choose what gets loaded). */
export function configurationChange(s: DraftlineSettings): { draftline: Record<string, unknown> } {
    const o = initializationOptions(s);
    delete o.model;
    return { draftline: o };
}

/** What `draftline/status` answers (the fields the clients use). */
export interface DraftlineStatus {
    version?: string;
    model_error?: string | null;
    disabled?: string;
    model?: { architecture?: string; [k: string]: unknown };
    documents?: number;
    counters?: { [name: string]: number };
    settings?: Record<string, unknown>;
    [k: string]: unknown;
}

export type StatusState = 'starting' | 'loading' | 'ready' | 'error' | 'disabled' | 'stopped';

/** The status bar's text (with a codicon) and tooltip for a status answer. */
export function describeStatus(st: DraftlineStatus | undefined, state?: StatusState): {
    state: StatusState; text: string; tooltip: string;
} {
    if (state === 'stopped') {
        return { state, text: '$(debug-disconnect) draftline', tooltip: 'draftline: server not running (click for details)' };
    }
    if (!st) {
        return { state: 'starting', text: '$(sync~spin) draftline', tooltip: 'draftline: starting the server' };
    }
    if (st.model_error) {
        return { state: 'error', text: '$(error) draftline', tooltip: String(st.model_error) };
    }
    if (st.disabled) {
        return { state: 'disabled', text: '$(circle-slash) draftline', tooltip: `draftline: disabled: ${st.disabled}` };
    }
    if (!st.model) {
        return { state: 'loading', text: '$(sync~spin) draftline', tooltip: 'draftline: loading the model' };
    }
    const c = st.counters ?? {};
    const parts = [`draftline ${st.version ?? ''}`.trim(), `model: ${st.model.architecture ?? '?'}`,
        `documents: ${st.documents ?? 0}`];
    const counts = ['requests', 'shown', 'accepted', 'partially_accepted']
        .filter((k) => c[k] !== undefined).map((k) => `${k.replace('_', ' ')} ${c[k]}`);
    if (counts.length) {
        parts.push(counts.join(', '));
    }
    return { state: 'ready', text: '$(sparkle) draftline', tooltip: parts.join('\n') };
}

/** What can send LSP messages: a vscode-languageclient LanguageClient or a ProtocolConnection. */
export interface Sender {
    sendNotification(method: string, params?: unknown): unknown;
    sendRequest(method: string, params?: unknown): Thenable<unknown>;
}

/** The item as the Copilot-style notifications carry it. */
export interface ShownItem {
    insertText: string;
    range?: Range;
}

export function insertTextOf(item: InlineCompletionItem): string {
    const t = item.insertText as unknown;
    return typeof t === 'string' ? t : (t as { value: string }).value;
}

/**
 * Tells the server what happened to its drafts: shown as ghost text, accepted, partially
 * accepted (word by word). Errors (an older server without these) are swallowed.
 */
export class DraftTelemetry {
    constructor(private readonly sender: () => Sender | undefined, private readonly log?: (m: string) => void) {}

    private async notify(method: string, params: unknown): Promise<void> {
        const s = this.sender();
        if (!s) {
            return;
        }
        try {
            await s.sendNotification(method, params);
        } catch (e) {
            this.log?.(`draftline: ${method} failed: ${e}`);
        }
    }

    shown(item: ShownItem): Promise<void> {
        return this.notify(Methods.didShowCompletion, { item });
    }

    partiallyAccepted(item: ShownItem, acceptedLength: number): Promise<void> {
        return this.notify(Methods.didPartiallyAcceptCompletion, { item, acceptedLength });
    }

    async accepted(uri: string, draftText: string): Promise<void> {
        const s = this.sender();
        if (!s) {
            return;
        }
        try {
            await s.sendRequest(ExecuteCommandRequest.method, { command: ACCEPT_COMMAND, arguments: [uri, draftText] });
        } catch (e) {
            this.log?.(`draftline: ${ACCEPT_COMMAND} failed: ${e}`);
        }
    }
}

export type LogLevel = 'trace' | 'debug' | 'info' | 'warn' | 'error';

const SERVER_LOG_LINE = /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) (.*)$/;
const SERVER_LOG_LEVELS: Record<string, LogLevel> = {
    DEBUG: 'debug', INFO: 'info', WARNING: 'warn', ERROR: 'error', CRITICAL: 'error',
};

/**
 * One line of the server's stderr (`<date> <time>,<ms> LEVEL logger: message`) as a log
 * channel entry: its level, and the text without the timestamp and level (the channel adds
 * both). Anything else there (a traceback, an argument error) is an error.
 */
export function serverLogLine(line: string): { level: LogLevel; text: string } {
    const m = SERVER_LOG_LINE.exec(line);
    return m ? { level: SERVER_LOG_LEVELS[m[1]], text: m[2] } : { level: 'error', text: line };
}

/** The server's command line from the `draftline.serverPath` setting. */
export function serverCommand(serverPath: string | undefined, extraArgs: string[] = []): { command: string; args: string[] } {
    const command = (serverPath ?? '').trim() || 'draftline';
    return { command, args: ['serve', ...extraArgs] };
}

export interface SessionOptions {
    command: string;
    args: string[];
    initializationOptions?: Record<string, unknown>;
    rootUri?: string | null;
    env?: NodeJS.ProcessEnv;
    cwd?: string;
    /** server stderr and window/logMessage lines */
    log?: (line: string) => void;
}

export interface ProgressEvent {
    token: ProgressToken;
    value: WorkDoneProgressBegin | WorkDoneProgressReport | WorkDoneProgressEnd;
}

/** A minimal LSP client over stdio for `draftline serve`, for plain Node (tests, scripts). */
export class DraftlineSession {
    private exited: Promise<number | null>;
    private versions = new Map<string, number>();

    private constructor(
        readonly process: ChildProcess,
        readonly connection: ProtocolConnection,
        readonly initializeResult: InitializeResult,
        /** work-done progress the server reported (model loading) */
        readonly progress: ProgressEvent[],
        /** window/logMessage and window/showMessage texts */
        readonly messages: string[],
    ) {
        this.exited = new Promise((resolve) => {
            if (process.exitCode !== null) {
                resolve(process.exitCode);
            } else {
                process.once('exit', (code) => resolve(code));
            }
        });
    }

    static async start(o: SessionOptions): Promise<DraftlineSession> {
        const proc = spawn(o.command, o.args, { cwd: o.cwd, env: o.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
        const spawnError = new Promise<never>((_, reject) => {
            proc.once('error', reject);
            proc.once('exit', (code, signal) => reject(new Error(
                `${o.command} ${o.args.join(' ')} exited (${signal ?? code}) before answering initialize`)));
        });
        proc.stderr!.setEncoding('utf8');
        proc.stderr!.on('data', (d: string) => o.log?.(d.replace(/\n$/, '')));
        const conn = createProtocolConnection(new StreamMessageReader(proc.stdout!), new StreamMessageWriter(proc.stdin!));
        const progress: ProgressEvent[] = [];
        const messages: string[] = [];
        conn.onRequest(WorkDoneProgressCreateRequest.method, () => null);
        conn.onNotification('$/progress', (p: ProgressEvent) => {
            progress.push(p);
        });
        conn.onNotification(LogMessageNotification.type, (p) => {
            messages.push(p.message);
            o.log?.(p.message);
        });
        conn.onNotification(ShowMessageNotification.type, (p) => {
            messages.push(p.message);
            o.log?.(p.message);
        });
        conn.onRequest('client/registerCapability', () => null);
        conn.onRequest('workspace/configuration', (p: { items: unknown[] }) => p.items.map(() => null));
        conn.listen();
        const init = conn.sendRequest(InitializeRequest.type, {
            processId: process.pid,
            rootUri: o.rootUri ?? null,
            capabilities: {
                window: { workDoneProgress: true },
                textDocument: {
                    synchronization: { dynamicRegistration: false },
                    inlineCompletion: { dynamicRegistration: false },
                    completion: { completionItem: { snippetSupport: false } },
                },
                workspace: { configuration: false, didChangeConfiguration: { dynamicRegistration: false } },
                general: { positionEncodings: ['utf-16'] },
            },
            initializationOptions: o.initializationOptions ?? {},
            clientInfo: { name: 'draftline-node-session' },
        });
        const result = await Promise.race([init, spawnError]);
        spawnError.catch(() => undefined); // a later 'error' event must not be an unhandled rejection
        await conn.sendNotification(InitializedNotification.type, {});
        return new DraftlineSession(proc, conn, result, progress, messages);
    }

    /** Server capabilities as answered to `initialize`. */
    get capabilities() {
        return this.initializeResult.capabilities;
    }

    /** Whether the server advertises the `draftline.accept` command. */
    get supportsAcceptCommand(): boolean {
        return (this.capabilities.executeCommandProvider?.commands ?? []).includes(ACCEPT_COMMAND);
    }

    sender(): Sender {
        return {
            sendNotification: (m, p) => this.connection.sendNotification(m, p),
            sendRequest: (m, p) => this.connection.sendRequest(m, p),
        };
    }

    async openDocument(uri: string, languageId: string, text: string): Promise<void> {
        this.versions.set(uri, 1);
        await this.connection.sendNotification(DidOpenTextDocumentNotification.type, {
            textDocument: { uri, languageId, version: 1, text },
        });
    }

    async changeConfiguration(settings: DraftlineSettings): Promise<void> {
        await this.connection.sendNotification(DidChangeConfigurationNotification.type, {
            settings: configurationChange(settings),
        });
    }

    async inlineCompletion(uri: string, position: Position, invoked = true): Promise<InlineCompletionItem[]> {
        const res = await this.connection.sendRequest(InlineCompletionRequest.type, {
            textDocument: { uri },
            position,
            context: {
                triggerKind: invoked ? InlineCompletionTriggerKind.Invoked : InlineCompletionTriggerKind.Automatic,
            },
        });
        if (!res) {
            return [];
        }
        return Array.isArray(res) ? res : (res as InlineCompletionList).items;
    }

    async completion(uri: string, position: Position): Promise<CompletionItem[]> {
        const res = await this.connection.sendRequest(CompletionRequest.type, { textDocument: { uri }, position });
        if (!res) {
            return [];
        }
        return Array.isArray(res) ? res : (res as CompletionList).items;
    }

    status(): Promise<DraftlineStatus> {
        return this.connection.sendRequest(Methods.status, {}) as Promise<DraftlineStatus>;
    }

    /** shutdown + exit; resolves to the server's exit code (killed after `timeoutMs`). */
    async shutdown(timeoutMs = 10000): Promise<number | null> {
        try {
            await withTimeout(this.connection.sendRequest(ShutdownRequest.type), timeoutMs, 'shutdown');
            await this.connection.sendNotification(ExitNotification.type);
        } catch {
            // fall through to the kill below
        }
        const timer = setTimeout(() => this.process.kill('SIGKILL'), timeoutMs);
        const code = await this.exited;
        clearTimeout(timer);
        this.connection.dispose();
        return code;
    }

    kill(): void {
        this.process.kill('SIGKILL');
    }
}

export function withTimeout<T>(p: Thenable<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms);
        p.then((v) => {
            clearTimeout(t);
            resolve(v);
        }, (e) => {
            clearTimeout(t);
            reject(e);
        });
    });
}

/** The LSP range of a single-line or multi-line insertion, for notifications. */
export function rangeAt(start: Position, end?: Position): Range {
    return { start, end: end ?? start };
}
