// Predict binary PPM (P6, 8-bit RGB) images with libaminet from C#, one JSON line per image.
// PPM keeps the example free of image libraries: a camera SDK hands over the same raw RGB buffer.
//   mcs -out:predict.exe Aminet.cs Predict.cs
//   LD_LIBRARY_PATH=<prefix>/lib mono predict.exe RUN a.ppm b.ppm ...
using System;
using System.Globalization;
using System.IO;
using System.Text;

static class Predict
{
    // The next header token of a PPM at `pos` (comments skipped).
    static string Token(byte[] file, ref int pos)
    {
        while (pos < file.Length && (char.IsWhiteSpace((char)file[pos]) || file[pos] == '#'))
        {
            if (file[pos] == '#') { while (pos < file.Length && file[pos] != '\n') ++pos; }
            else ++pos;
        }
        int start = pos;
        while (pos < file.Length && !char.IsWhiteSpace((char)file[pos])) ++pos;
        return Encoding.ASCII.GetString(file, start, pos - start);
    }

    // The RGB bytes, width and height of a binary PPM (P6, maxval 255).
    static byte[] ReadPpm(string path, out int width, out int height)
    {
        byte[] file = File.ReadAllBytes(path);
        int pos = 0;
        if (Token(file, ref pos) != "P6") throw new InvalidDataException(path + ": not a binary PPM (P6)");
        width = int.Parse(Token(file, ref pos));
        height = int.Parse(Token(file, ref pos));
        if (Token(file, ref pos) != "255") throw new InvalidDataException(path + ": only 8-bit PPM (maxval 255) is read");
        ++pos;  // the single whitespace before the pixels
        int size = width * height * 3;
        if (file.Length - pos < size) throw new InvalidDataException(path + ": truncated");
        var pixels = new byte[size];
        Array.Copy(file, pos, pixels, 0, size);
        return pixels;
    }

    static int Main(string[] args)
    {
        if (args.Length < 2) { Console.Error.WriteLine("usage: mono predict.exe BUNDLE IMAGE.ppm..."); return 2; }
        var inv = CultureInfo.InvariantCulture;
        try
        {
            using (var detector = new Aminet.Detector(args[0]))
            {
                for (int i = 1; i < args.Length; ++i)
                {
                    int w, h;
                    byte[] pixels = ReadPpm(args[i], out w, out h);
                    var r = detector.Predict(new[] { pixels }, new[] { w }, new[] { h }, 3, 0)[0];
                    int flagged = 0;
                    foreach (byte m in r.Mask) flagged += m;
                    Console.WriteLine("{" + string.Format(inv,
                        "\"file\": \"{0}\", \"score\": {1:R}, \"normalized_score\": {2:R}, \"is_anomaly\": {3}, \"anomalous_pixel_fraction\": {4:R}",
                        Path.GetFileName(args[i]), r.Score, r.NormalizedScore, r.IsAnomaly ? "true" : "false",
                        (double)flagged / r.Mask.Length) + "}");
                }
            }
            return 0;
        }
        catch (Aminet.AminetException e)
        {
            Console.Error.WriteLine(e.Status + ": " + e.Message);
            return 1;
        }
    }
}
