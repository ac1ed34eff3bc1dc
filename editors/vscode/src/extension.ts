/*
 * draftline for VS Code: runs `draftline serve` over stdio with vscode-languageclient.
 *
 * vscode-languageclient 10 wires textDocument/inlineCompletion (LSP 3.18) to a VS Code
 * InlineCompletionItemProvider itself; the middleware below only adds what draftline wants
 * to know (shown / accepted drafts). All k drafts are returned: VS Code cycles through them
 * (Alt+] / Alt+[ or the hover toolbar). Work-done progress from the server (model loading)
 * is shown by the client library; the status bar item polls `draftline/status`.
 */

import * as readline from 'readline';
import * as vscode from 'vscode';
import {
    LanguageClient,
    LanguageClientOptions,
    ServerOptions,
    State,
    TransportKind,
    DocumentSelector,
    InlineCompletionRequest,
} from 'vscode-languageclient/node';
import {
    configurationChange,
    describeStatus,
    DraftlineSettings,
    DraftlineStatus,
    DraftTelemetry,
    initializationOptions,
    Methods,
    serverCommand,
    serverLogLine,
    ShownItem,
    StatusState,
} from './session';

const SECTION = 'draftline';
const DID_ACCEPT = 'draftline.didAcceptDraft'; // internal: the item's command after an accept

let client: LanguageClient | undefined;
let output: vscode.LogOutputChannel;
let statusItem: vscode.StatusBarItem;
let statusTimer: NodeJS.Timeout | undefined;
let lastStatus: DraftlineStatus | undefined;
let state: StatusState = 'starting';

/** The draft last put on screen, for word-by-word accepts. */
let lastShown: { uri: string; item: ShownItem; accepted: number } | undefined;

const telemetry = new DraftTelemetry(() => (client && client.state === State.Running ? client : undefined),
    (m) => output?.appendLine(m));

export function readSettings(): DraftlineSettings {
    const c = vscode.workspace.getConfiguration(SECTION);
    // the model comes from user (global) settings only: a workspace must not choose what runs
    const model = c.inspect<string>('model')?.globalValue;
    return {
        model: model || undefined,
        drafts: c.get<number>('drafts'),
        maxTokens: c.get<number>('maxTokens'),
        debounceMs: c.get<number>('debounceMs'),
        latencyBudgetMs: c.get<number>('latencyBudgetMs'),
        requestCap: c.get<number>('requestCap'),
        farTokens: c.get<number>('farTokens'),
        speculate: c.get<number>('speculate'),
        ahead: c.get<boolean>('ahead'),
        monitors: { enabled: c.get<boolean>('monitors.enabled') },
    };
}

function serverPath(): string | undefined {
    const c = vscode.workspace.getConfiguration(SECTION);
    return c.inspect<string>('serverPath')?.globalValue || c.get<string>('serverPath');
}

function documentSelector(): DocumentSelector {
    const langs = vscode.workspace.getConfiguration(SECTION).get<string[]>('languages') ?? [];
    if (langs.length === 0 || langs.includes('*')) {
        return [{ scheme: 'file' }, { scheme: 'untitled' }];
    }
    return langs.flatMap((language) => [{ scheme: 'file', language }, { scheme: 'untitled', language }]);
}

function lines(input: NodeJS.ReadableStream, each: (line: string) => void): void {
    readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 }).on('line', each);
}

function createClient(): LanguageClient {
    const { command, args } = serverCommand(serverPath());
    const serverOptions: ServerOptions = {
        run: { command, args, transport: TransportKind.stdio },
        debug: { command, args: [...args, '--log-level', 'DEBUG'], transport: TransportKind.stdio },
    };
    const clientOptions: LanguageClientOptions = {
        documentSelector: documentSelector(),
        initializationOptions: () => initializationOptions(readSettings()),
        outputChannel: output,
        // vscode-languageclient logs every stderr line as an error; the server's stderr is its
        // log (`... INFO draftline.lsp.server: ...`): keep each line's own level
        stdioOptions: {
            stdout: (input, channel) => lines(input, (l) => channel.info(l)),
            stderr: (input, channel) => lines(input, (l) => {
                const { level, text } = serverLogLine(l);
                channel[level](text);
            }),
        },
        middleware: {
            provideInlineCompletionItems: async (document, position, context, token, next) => {
                const result = await next(document, position, context, token);
                if (result && !token.isCancellationRequested) {
                    decorate(document, Array.isArray(result) ? result : result.items);
                }
                return result;
            },
        },
    };
    const c = new LanguageClient('draftline', 'draftline', serverOptions, clientOptions);
    c.onDidChangeState((e) => {
        if (e.newState === State.Stopped) {
            setStatus(undefined, 'stopped');
        } else if (e.newState === State.Running) {
            schedulePoll(500);
        }
    });
    return c;
}

/** Attach the accept command to each draft and report the first one as shown. */
function decorate(document: vscode.TextDocument, items: vscode.InlineCompletionItem[]): void {
    const uri = document.uri.toString();
    for (const item of items) {
        const text = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
        item.command ??= { title: 'draftline: accepted', command: DID_ACCEPT, arguments: [uri, text] };
    }
    if (items.length > 0 && client) {
        // VS Code shows the first item at once (the stable API has no "shown" event)
        const first = items[0];
        const shown: ShownItem = {
            insertText: typeof first.insertText === 'string' ? first.insertText : first.insertText.value,
            range: first.range ? client.code2ProtocolConverter.asRange(first.range) : undefined,
        };
        lastShown = { uri, item: shown, accepted: 0 };
        void telemetry.shown(shown);
    }
}

/**
 * vscode-languageclient registers its inline completion provider only when the server
 * advertises `inlineCompletionProvider`; for a server that answers the request without
 * advertising it, register the same provider ourselves.
 */
function fallbackInlineProvider(c: LanguageClient): vscode.Disposable | undefined {
    if (c.initializeResult?.capabilities.inlineCompletionProvider) {
        return undefined;
    }
    output.appendLine('draftline: server does not advertise inlineCompletionProvider; registering the provider here');
    const selector = c.protocol2CodeConverter.asDocumentSelector(documentSelector());
    return vscode.languages.registerInlineCompletionItemProvider(selector, {
        async provideInlineCompletionItems(document, position, context, token) {
            if (c.state !== State.Running) {
                return undefined;
            }
            const params = c.code2ProtocolConverter.asInlineCompletionParams(document, position, context);
            try {
                const res = await c.sendRequest(InlineCompletionRequest.type, params, token);
                if (token.isCancellationRequested) {
                    return undefined;
                }
                const list = await c.protocol2CodeConverter.asInlineCompletionResult(res, token);
                if (list) {
                    decorate(document, Array.isArray(list) ? list : list.items);
                }
                return list;
            } catch (e) {
                return c.handleFailedRequest(InlineCompletionRequest.type, token, e, null);
            }
        },
    });
}

let fallback: vscode.Disposable | undefined;

async function startClient(): Promise<void> {
    client = createClient();
    setStatus(undefined, 'starting');
    try {
        await client.start();
        fallback = fallbackInlineProvider(client);
    } catch (e) {
        setStatus(undefined, 'stopped');
        const path = serverCommand(serverPath()).command;
        void vscode.window.showErrorMessage(
            `draftline: could not start "${path} serve" (${e}). Install draftline (pip install draftline) ` +
            'or set "draftline.serverPath" in your user settings.', 'Open Settings').then((pick) => {
            if (pick) {
                void vscode.commands.executeCommand('workbench.action.openSettings', 'draftline.serverPath');
            }
        });
    }
}

async function stopClient(): Promise<void> {
    fallback?.dispose();
    fallback = undefined;
    const c = client;
    client = undefined;
    if (c) {
        try {
            await c.stop(5000);
        } catch {
            // already gone
        }
    }
}

async function restartClient(): Promise<void> {
    await stopClient();
    await startClient();
}

function setStatus(st: DraftlineStatus | undefined, forced?: StatusState): void {
    lastStatus = st;
    const d = describeStatus(st, forced);
    state = d.state;
    statusItem.text = d.text;
    statusItem.tooltip = d.tooltip;
    statusItem.backgroundColor = d.state === 'error'
        ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
    statusItem.show();
}

function schedulePoll(ms: number): void {
    if (statusTimer) {
        clearTimeout(statusTimer);
    }
    statusTimer = setTimeout(() => void pollStatus(), ms);
}

async function pollStatus(): Promise<void> {
    const c = client;
    if (!c || c.state !== State.Running) {
        return;
    }
    try {
        const st = (await c.sendRequest(Methods.status, {})) as DraftlineStatus;
        setStatus(st);
    } catch (e) {
        output.appendLine(`draftline/status failed: ${e}`);
    }
    // quickly while the model loads, then now and then for the counters
    schedulePoll(state === 'loading' || state === 'starting' ? 1000 : 15000);
}

async function showStatus(): Promise<void> {
    await pollStatus();
    output.appendLine(JSON.stringify(lastStatus ?? { state }, null, 2));
    output.show(true);
}

/** Accept the next word of the ghost text and tell the server how much was taken. */
async function acceptNextWord(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const before = editor ? editor.document.offsetAt(editor.selection.active) : 0;
    await vscode.commands.executeCommand('editor.action.inlineSuggest.acceptNextWord');
    if (!editor || !lastShown || lastShown.uri !== editor.document.uri.toString()) {
        return;
    }
    const after = editor.document.offsetAt(editor.selection.active);
    if (after > before) {
        lastShown.accepted += after - before; // UTF-16 code units, as LSP positions
        void telemetry.partiallyAccepted(lastShown.item, lastShown.accepted);
    }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    output = vscode.window.createOutputChannel('draftline', { log: true });
    statusItem = vscode.window.createStatusBarItem('draftline.status', vscode.StatusBarAlignment.Right, 100);
    statusItem.name = 'draftline';
    statusItem.command = 'draftline.showStatus';
    context.subscriptions.push(output, statusItem);

    context.subscriptions.push(
        vscode.commands.registerCommand(DID_ACCEPT, (uri: string, text: string) => {
            lastShown = undefined;
            return telemetry.accepted(uri, text);
        }),
        vscode.commands.registerCommand('draftline.acceptNextWord', acceptNextWord),
        vscode.commands.registerCommand('draftline.restart', restartClient),
        vscode.commands.registerCommand('draftline.showStatus', showStatus),
        vscode.workspace.onDidChangeConfiguration(async (e) => {
            if (!e.affectsConfiguration(SECTION)) {
                return;
            }
            if (['serverPath', 'model', 'languages'].some((k) => e.affectsConfiguration(`${SECTION}.${k}`))) {
                await restartClient(); // what runs and for which files: a new server
                return;
            }
            if (client && client.state === State.Running) {
                await client.sendNotification('workspace/didChangeConfiguration',
                    { settings: configurationChange(readSettings()) });
                schedulePoll(500);
            }
        }),
        { dispose: () => statusTimer && clearTimeout(statusTimer) },
    );
    await startClient();
}

export async function deactivate(): Promise<void> {
    if (statusTimer) {
        clearTimeout(statusTimer);
    }
    await stopClient();
}
