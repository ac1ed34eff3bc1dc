/*
 * Smoke test of the extension's client code against the real server, under plain Node:
 *
 *   node out/test/smoke.js [server command and args...]     (default: draftline serve)
 *
 * Starts the server with the extension's initializationOptions, opens a Python document,
 * asks for inline completions (as VS Code's provider does), reports shown / accepted /
 * partially accepted drafts as the extension does, reads `draftline/status`, shuts down.
 * Prints one line `SMOKE {json}` and exits 0 when every check passed.
 */

import * as assert from 'assert';
import {
    configurationChange,
    describeStatus,
    DraftlineSession,
    DraftTelemetry,
    initializationOptions,
    insertTextOf,
    serverLogLine,
    withTimeout,
} from '../session';

const SOURCE = [
    'def sub(a, b):',
    '    """Return a minus b."""',
    '    return a - b',
    '',
    '',
    'def add(a, b):',
    '    """Return the sum of a and b."""',
    '    return ',
    '',
].join('\n');

async function main(): Promise<number> {
    const argv = process.argv.slice(2);
    const command = argv[0] ?? 'draftline';
    const args = argv.length > 1 ? argv.slice(1) : ['serve'];
    const stderr: string[] = [];
    const t0 = Date.now();
    const opts = initializationOptions({ drafts: 3, maxTokens: 24, debounceMs: 50, monitors: { enabled: true } });
    assert.deepStrictEqual(opts, { drafts: 3, maxTokens: 24, debounceMs: 50, monitors: { enabled: true } });
    assert.deepStrictEqual(initializationOptions({ model: '', drafts: undefined }), {});
    assert.strictEqual(configurationChange({ model: '/x.gguf', drafts: 2 }).draftline.model, undefined);
    // the server's stderr is its log: each line keeps its level in the output channel
    assert.deepStrictEqual(serverLogLine('2026-12-04 21:34:47,705 INFO draftline.lsp.server: model ready (100%)'),
        { level: 'info', text: 'draftline.lsp.server: model ready (100%)' });
    assert.strictEqual(serverLogLine('2026-12-04 21:34:47,705 WARNING draftline.x: slow').level, 'warn');
    assert.strictEqual(serverLogLine('draftline: error: unrecognized arguments: --stdio').level, 'error');

    const out: Record<string, unknown> = {};
    let session: DraftlineSession;
    try {
        session = await withTimeout(DraftlineSession.start({
            command, args, initializationOptions: opts, rootUri: null,
            log: (l) => stderr.push(l),
        }), 60000, 'initialize');
    } catch (e) {
        out.error = String(e instanceof Error ? e.message : e);
        out.serverLog = stderr.join('\n').slice(-3000);
        process.stdout.write(`SMOKE ${JSON.stringify(out)}\n`);
        return 1;
    }
    try {
        const caps = session.capabilities;
        // vscode-languageclient wires its provider only when this is advertised; the
        // extension registers one itself otherwise (extension.ts: fallbackInlineProvider)
        out.advertisesInlineCompletion = Boolean(caps.inlineCompletionProvider);
        assert.ok(caps.completionProvider, 'server does not advertise completionProvider');
        out.acceptCommand = session.supportsAcceptCommand;

        const uri = 'file:///tmp/draftline-smoke/arith.py';
        await session.openDocument(uri, 'python', SOURCE);
        const position = { line: 7, character: 11 };
        const t1 = Date.now();
        const items = await withTimeout(session.inlineCompletion(uri, position), 120000, 'inlineCompletion');
        out.inlineMs = Date.now() - t1;
        out.items = items.map(insertTextOf);
        assert.ok(items.length > 0, 'no inline completion items');
        const first = items[0];
        assert.ok(insertTextOf(first).trim().length > 0, 'the first draft is empty');
        if (first.range) {
            assert.deepStrictEqual(first.range.start, position, 'a draft must start at the cursor');
        }

        // what the extension reports while the user looks at and takes the draft
        const telemetry = new DraftTelemetry(() => session.sender());
        const shown = { insertText: insertTextOf(first), range: first.range };
        await telemetry.shown(shown);
        await telemetry.partiallyAccepted(shown, Math.min(2, shown.insertText.length));
        await telemetry.accepted(uri, shown.insertText);
        await session.changeConfiguration({ drafts: 2 });

        const completion = await withTimeout(session.completion(uri, position), 120000, 'completion');
        out.completionLabels = completion.map((c) => c.label);
        assert.ok(completion.length > 0, 'no completion items');

        const st = await withTimeout(session.status(), 10000, 'status');
        out.status = { model: st.model?.architecture, counters: st.counters, drafts: st.settings?.drafts };
        assert.ok(st.model, 'status has no model');
        assert.strictEqual(st.settings?.drafts, 2, 'didChangeConfiguration not applied');
        assert.strictEqual(st.settings?.max_tokens, 24, 'initializationOptions not applied');
        assert.strictEqual(describeStatus(st).state, 'ready');
        out.statusBar = describeStatus(st).text;
        if (session.supportsAcceptCommand) {
            // a server with the accept command counts what the client reported
            const c = st.counters ?? {};
            assert.ok((c.accepted ?? 0) >= 1, `accepted not counted: ${JSON.stringify(c)}`);
            assert.ok((c.shown ?? 0) >= 1, `shown not counted: ${JSON.stringify(c)}`);
            assert.ok((c.partially_accepted ?? 0) >= 1, `partial accept not counted: ${JSON.stringify(c)}`);
        }
        out.progress = session.progress.map((p) => p.value.kind);
    } catch (e) {
        out.error = String(e instanceof Error ? e.stack ?? e.message : e);
    } finally {
        out.exitCode = await session.shutdown();
        out.totalMs = Date.now() - t0;
    }
    if (!out.error && out.exitCode !== 0) {
        out.error = `server exit code ${out.exitCode} after shutdown/exit`;
    }
    if (out.error) {
        out.serverLog = stderr.join('\n').slice(-3000);
    }
    process.stdout.write(`SMOKE ${JSON.stringify(out)}\n`);
    return out.error ? 1 : 0;
}

main().then((code) => process.exit(code), (e) => {
    process.stdout.write(`SMOKE ${JSON.stringify({ error: String(e && e.stack ? e.stack : e) })}\n`);
    process.exit(1);
});
