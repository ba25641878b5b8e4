using System.Diagnostics;

namespace MoFO;

/// <summary>
/// A console progress display with rate and ETA, written to stderr: redrawn in place on a terminal, one line every
/// few seconds otherwise (logs, CI). Thread-safe. Dispose prints the final line.
/// </summary>
public sealed class ConsoleProgress : IDisposable
{
    readonly string _label;
    readonly long _total;
    readonly string _unit;
    readonly Stopwatch _clock = Stopwatch.StartNew();
    readonly bool _interactive = !Console.IsErrorRedirected;
    readonly object _gate = new();
    readonly TextWriter? _output;
    long _done;
    long _drawn = -1;
    TimeSpan _lastDraw = TimeSpan.FromDays(-1);
    bool _finished;

    /// <summary>When false (e.g. in tests), nothing is printed.</summary>
    public static bool Enabled { get; set; } = true;

    public ConsoleProgress(string label, long total, string unit = "items", TextWriter? output = null)
    {
        _label = label;
        _total = Math.Max(0, total);
        _unit = unit;
        _output = output;
    }

    public long Done => Interlocked.Read(ref _done);

    /// <summary>Extra text shown after the counts (e.g. the current loss).</summary>
    public string? Status { get; set; }

    public void Advance(long n = 1)
    {
        var done = Interlocked.Add(ref _done, n);
        var now = _clock.Elapsed;
        var every = _interactive ? TimeSpan.FromMilliseconds(200) : TimeSpan.FromSeconds(10);
        if (now - _lastDraw < every && done < _total) return;
        lock (_gate)
        {
            if (now - _lastDraw < every && done < _total) return;
            _lastDraw = now;
            Draw(done, final: false);
        }
    }

    public string Describe(long done)
    {
        var elapsed = _clock.Elapsed.TotalSeconds;
        var rate = elapsed > 0 ? done / elapsed : 0;
        var pct = _total > 0 ? 100.0 * done / _total : 100.0;
        var eta = rate > 0 && _total > done ? TimeSpan.FromSeconds((_total - done) / rate) : TimeSpan.Zero;
        var status = Status is null ? "" : ", " + Status;
        return $"{_label}: {done}/{_total} {_unit} ({pct:F0}%) {rate:F1}/s, elapsed {Fmt(TimeSpan.FromSeconds(elapsed))}, ETA {Fmt(eta)}{status}";
    }

    void Draw(long done, bool final)
    {
        if (!Enabled) return;
        if (final && !_interactive && done == _drawn) return;   // the last line is already out
        _drawn = done;
        var text = Describe(done);
        // Console.Error as it is now, not as it was when the display was made: a caller that swaps the console for a
        // while (tests capturing output) must not leave this display writing into its closed writer.
        var @out = _output ?? Console.Error;
        if (_interactive) @out.Write("\r" + text.PadRight(Console.IsErrorRedirected ? 0 : 100) + (final ? "\n" : ""));
        else @out.WriteLine(text);
    }

    static string Fmt(TimeSpan t) => t.TotalHours >= 1 ? t.ToString(@"h\:mm\:ss") : t.ToString(@"m\:ss");

    public void Dispose()
    {
        lock (_gate)
        {
            if (_finished) return;
            _finished = true;
            Draw(Done, final: true);
        }
    }
}
