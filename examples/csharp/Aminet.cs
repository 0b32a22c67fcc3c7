// P/Invoke bindings of libaminet's C ABI (csrc/include/aminet/aminet.h) for .NET and Mono, with a small
// IDisposable Detector on top. The structs mirror the header's field for field; the library is found as
// "aminet" (libaminet.so on LD_LIBRARY_PATH, aminet.dll on PATH).
using System;
using System.Runtime.InteropServices;

namespace Aminet
{
    public enum Status { Ok = 0, InvalidArgument = 1, Bundle = 2, BackendUnavailable = 3, VersionMismatch = 4, Inference = 5, Internal = 6 }

    [StructLayout(LayoutKind.Sequential)]
    public struct Image
    {
        public IntPtr Data; public int Width; public int Height; public long Stride; public int Channels; public int Order;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PredictParams
    {
        public int Map; public int Threshold; public double ThresholdValue; public double Sensitivity; public double PixelThreshold;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct NativeResult
    {
        public int Status; public IntPtr Message; public double Score; public double NormalizedScore; public int IsAnomaly;
        public double ImageThreshold; public double PixelThreshold; public int MapWidth; public int MapHeight;
        public IntPtr AnomalyMap; public IntPtr Mask; public int GridSize; public IntPtr TokenMask;
    }

    public static class Native
    {
        // the ABI version this file was written for (AMINET_ABI_VERSION of aminet.h)
        public const int AbiVersion = 1;
        const string Lib = "aminet";
        [DllImport(Lib)] public static extern IntPtr aminet_version();
        [DllImport(Lib)] public static extern int aminet_abi_version();
        [DllImport(Lib)] public static extern IntPtr aminet_last_error();
        [DllImport(Lib)] public static extern int aminet_detector_create_abi(int abi, string bundle, string backend, IntPtr options, out IntPtr detector);
        [DllImport(Lib)] public static extern void aminet_detector_release(IntPtr detector);
        [DllImport(Lib)] public static extern int aminet_predict(IntPtr detector, Image[] images, UIntPtr count, ref PredictParams p, out IntPtr results);
        [DllImport(Lib)] public static extern void aminet_predict_params_init(ref PredictParams p);
        [DllImport(Lib)] public static extern IntPtr aminet_results_get(IntPtr results, UIntPtr i);
        [DllImport(Lib)] public static extern void aminet_results_release(IntPtr results);

        public static string LastError() { return Marshal.PtrToStringAnsi(aminet_last_error()); }
        public static string Version() { return Marshal.PtrToStringAnsi(aminet_version()); }
    }

    public class AminetException : Exception
    {
        public Status Status { get; }
        public AminetException(int status, string message) : base(message) { Status = (Status)status; }
    }

    public class Result
    {
        public Status Status; public string Message; public double Score; public double NormalizedScore; public bool IsAnomaly;
        public int MapWidth; public int MapHeight; public float[] AnomalyMap; public byte[] Mask;
    }

    public sealed class Detector : IDisposable
    {
        IntPtr handle;

        public Detector(string bundle, string backend = "auto")
        {
            int status = Native.aminet_detector_create_abi(Native.AbiVersion, bundle, backend, IntPtr.Zero, out handle);
            if (status != 0) throw new AminetException(status, Native.LastError());
        }

        // Frames of 8-bit pixels (channels 1, 3 or 4; order 0 = RGB, 1 = BGR), predicted in one call.
        public Result[] Predict(byte[][] pixels, int[] widths, int[] heights, int channels, int order, double sensitivity = double.NaN)
        {
            var pins = new GCHandle[pixels.Length];
            var images = new Image[pixels.Length];
            try
            {
                for (int i = 0; i < pixels.Length; ++i)
                {
                    pins[i] = GCHandle.Alloc(pixels[i], GCHandleType.Pinned);
                    images[i] = new Image { Data = pins[i].AddrOfPinnedObject(), Width = widths[i], Height = heights[i],
                                            Stride = (long)widths[i] * channels, Channels = channels, Order = order };
                }
                var p = new PredictParams();
                Native.aminet_predict_params_init(ref p);
                p.Sensitivity = sensitivity;
                IntPtr results;
                int status = Native.aminet_predict(handle, images, (UIntPtr)images.Length, ref p, out results);
                if (status != 0) throw new AminetException(status, Native.LastError());
                try { return Read(results, images.Length); }
                finally { Native.aminet_results_release(results); }
            }
            finally
            {
                foreach (var pin in pins) if (pin.IsAllocated) pin.Free();
            }
        }

        static Result[] Read(IntPtr results, int count)
        {
            var output = new Result[count];
            for (int i = 0; i < count; ++i)
            {
                var r = Marshal.PtrToStructure<NativeResult>(Native.aminet_results_get(results, (UIntPtr)i));
                var o = new Result { Status = (Status)r.Status, Message = Marshal.PtrToStringAnsi(r.Message), Score = r.Score,
                                     NormalizedScore = r.NormalizedScore, IsAnomaly = r.IsAnomaly != 0,
                                     MapWidth = r.MapWidth, MapHeight = r.MapHeight };
                if (r.Status == 0 && r.AnomalyMap != IntPtr.Zero)
                {
                    int n = r.MapWidth * r.MapHeight;
                    o.AnomalyMap = new float[n];
                    o.Mask = new byte[n];
                    Marshal.Copy(r.AnomalyMap, o.AnomalyMap, 0, n);
                    Marshal.Copy(r.Mask, o.Mask, 0, n);
                }
                output[i] = o;
            }
            return output;
        }

        public void Dispose()
        {
            if (handle != IntPtr.Zero) { Native.aminet_detector_release(handle); handle = IntPtr.Zero; }
        }
    }
}
